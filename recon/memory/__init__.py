"""recon.memory: streaming KV caches and their eviction policies (see kv_cache.py)."""

from recon.memory.kv_cache import EvictionPolicy, KVCache, StreamingMemory

__all__ = ["EvictionPolicy", "KVCache", "StreamingMemory"]
