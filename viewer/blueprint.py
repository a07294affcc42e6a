"""The one function that lays out the viewer for a list of streams, and the entity paths it relies on.

Entity tree, one subtree per stream (STYLE §6.11):

    world                              static ViewCoordinates (RDF: the first camera's OpenCV axes)
    world/<stream>/cam                 Transform3D, T_world_cam logged as parent-from-child
    world/<stream>/cam/image           Pinhole (RDF camera axes) + JPEG-encoded image
    world/<stream>/cam/image/depth     DepthImage (metres, or the session's scale)
    world/<stream>/points              this frame's confidence-filtered, subsampled coloured points
    world/<stream>/map                 voxel-downsampled union of all frames' points (refreshed periodically)
    world/<stream>/trajectory/<k>      LineStrips3D of camera centres, block k of `trajectory_block` frames
    stats/<stream>/fps                 Scalars: results per second (wall clock, smoothed)
    stats/<stream>/latency_ms          Scalars: capture to result, when the capture clock is this machine's
    stats/<stream>/publish_latency_ms  Scalars: capture to publish, as the reconstruction node measured it
    stats/<stream>/memory_mb           Scalars: memory held by the backend's streaming state (when known)
    stats/<stream>/tokens_k            Scalars: thousands of tokens in attention caches (when known)
    stats/<stream>/tracked             Scalars: 1 tracked, 0 no pose for that frame

Entity queries match literal paths with a trailing `/**` for subtrees only (no `*` inside a path), so every rule
that concerns streams is written out per stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import rerun as rr
import rerun.blueprint as rrb

WORLD = "world"
STATS = "stats"

# (entity leaf under stats/<stream>, plot title); memory and tokens share one plot.
PLOTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("fps",), "frames/s"),
    (("latency_ms", "publish_latency_ms"), "latency (ms)"),
    (("memory_mb", "tokens_k"), "memory (MB) / tokens (k)"),
    (("tracked",), "tracked"),
)


def stream_root(stream_id: str) -> str:
    """Entity path of a stream's subtree (stream ids are escaped, so any name is a single path part)."""
    return f"{WORLD}/{rr.escape_entity_path_part(stream_id)}"


def stats_root(stream_id: str) -> str:
    """Entity path of a stream's time series."""
    return f"{STATS}/{rr.escape_entity_path_part(stream_id)}"


def build_blueprint(stream_ids: Sequence[str], *, max_2d_panels: int = 4, depth_panels: bool = True,
                    plots: bool = True, collapse_panels: bool = False) -> rrb.Blueprint:
    """3-D view of the world (depth images left out: they would be drawn as a colour-mapped surface over the
    points) beside at most `max_2d_panels` 2-D panels (image, then depth, per stream, in stream order), so many
    streams never produce an unreadable wall of tiny panels; below them a row of time-series plots (`PLOTS`)."""
    no_depth = [f"- {stream_root(s)}/cam/image/depth" for s in stream_ids]
    view3d = rrb.Spatial3DView(origin=WORLD, name="3D", contents=[f"+ {WORLD}/**", *no_depth])
    panels: list[rrb.Spatial2DView] = []
    for stream_id in stream_ids:
        image = f"{stream_root(stream_id)}/cam/image"
        if len(panels) < max_2d_panels:
            panels.append(rrb.Spatial2DView(origin=image, name=f"{stream_id} image",
                                            contents=["+ $origin", "- $origin/depth"]))
        if depth_panels and len(panels) < max_2d_panels:
            panels.append(rrb.Spatial2DView(origin=image, name=f"{stream_id} depth", contents=["+ $origin/depth"]))
    top: rrb.Container | rrb.View = view3d
    if panels:
        side = rrb.Vertical(*panels) if len(panels) <= 2 else rrb.Grid(*panels)
        top = rrb.Horizontal(view3d, side, column_shares=[3, 2])
    if not plots or not stream_ids:
        return rrb.Blueprint(top, collapse_panels=collapse_panels)
    series = [rrb.TimeSeriesView(origin=STATS, name=title,
                                 contents=[f"+ {stats_root(s)}/{leaf}" for s in stream_ids for leaf in leaves])
              for leaves, title in PLOTS]
    return rrb.Blueprint(rrb.Vertical(top, rrb.Horizontal(*series), row_shares=[4, 1]),
                         collapse_panels=collapse_panels)
