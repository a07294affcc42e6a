"""The one function that lays out the viewer for a list of streams, and the entity paths it relies on.

Entity tree, one subtree per stream (STYLE §6.11):

    world                              static ViewCoordinates (RDF: the first camera's OpenCV axes)
    world/<stream>/cam                 Transform3D, T_world_cam logged as parent-from-child
    world/<stream>/cam/image           Pinhole (RDF camera axes) + JPEG-encoded image
    world/<stream>/cam/image/depth     DepthImage (metres, or the session's scale)
    world/<stream>/points              this frame's confidence-filtered, subsampled coloured points
    world/<stream>/map                 voxel-downsampled union of all frames' points (refreshed periodically)
    world/<stream>/trajectory/<k>      LineStrips3D of camera centres, block k of `trajectory_block` frames
"""

from __future__ import annotations

from collections.abc import Sequence

import rerun as rr
import rerun.blueprint as rrb

WORLD = "world"


def stream_root(stream_id: str) -> str:
    """Entity path of a stream's subtree (stream ids are escaped, so any name is a single path part)."""
    return f"{WORLD}/{rr.escape_entity_path_part(stream_id)}"


def build_blueprint(stream_ids: Sequence[str], *, max_2d_panels: int = 4, depth_panels: bool = True
                    ) -> rrb.Blueprint:
    """3-D view of the world (depth images left out: they would be drawn as a second point cloud) beside
    at most `max_2d_panels` 2-D panels (image, then depth, per stream, in stream order), so many streams
    never produce an unreadable wall of tiny panels."""
    view3d = rrb.Spatial3DView(origin=WORLD, name="3D", contents=[f"+ {WORLD}/**", f"- {WORLD}/*/cam/image/depth"])
    panels: list[rrb.Spatial2DView] = []
    for stream_id in stream_ids:
        image = f"{stream_root(stream_id)}/cam/image"
        if len(panels) < max_2d_panels:
            panels.append(rrb.Spatial2DView(origin=image, name=f"{stream_id} image",
                                            contents=["+ $origin", "- $origin/depth"]))
        if depth_panels and len(panels) < max_2d_panels:
            panels.append(rrb.Spatial2DView(origin=image, name=f"{stream_id} depth", contents=["+ $origin/depth"]))
    if not panels:
        return rrb.Blueprint(view3d, collapse_panels=False)
    side = rrb.Vertical(*panels) if len(panels) <= 2 else rrb.Grid(*panels)
    return rrb.Blueprint(rrb.Horizontal(view3d, side, column_shares=[3, 2]), collapse_panels=False)
