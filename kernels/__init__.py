"""recon.kernels: attention dispatch (SDPA / xformers / FlashAttention) and Triton kernels with torch references.

Imports only torch (and triton / xformers lazily, when present).
"""
