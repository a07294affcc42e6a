"""Find the ROS 1 Python modules that Debian installs, from inside recon's virtual environment.

Debian's `python3-rospy`, `python3-sensor-msgs`, ... live in `/usr/lib/python3/dist-packages`, which a venv
does not see. Putting that folder on `sys.path` would also expose Debian's numpy, yaml, cryptography, ...
to the whole process. Instead `enable_system_ros()` appends one finder at the *end* of `sys.meta_path`
that serves only ROS top-level names (rospy, rosgraph, genpy, `*_msgs`, ...) and, as a last resort, the
few pure-Python libraries rospy needs when the venv lacks them. Because it comes last, anything the venv
provides always wins, and a sourced ROS workspace (`PYTHONPATH` set by setup.bash) is used as is.

Only the ROS node's entry point calls this; `import recon` never does. Debian's Python 3.11.2 and the venv's
3.11.x share the ABI, so the few compiled helpers ROS pulls in load either way.
`RECON_ROS_PYTHONPATH` (os.pathsep-separated folders) replaces the default folder list.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from recon.errors import MissingDependencyError

logger = logging.getLogger(__name__)

DEFAULT_FOLDERS = ("/usr/lib/python3/dist-packages",)

# Top-level modules of ROS 1 itself, served from the system folders.
ROS_MODULES = frozenset({
    "rospy", "rosgraph", "roslib", "rospkg", "genpy", "genmsg", "catkin", "catkin_pkg", "roscpp", "rosmaster",
    "rosparam", "rostopic", "rosnode", "roslaunch", "rosbag", "roslz4", "tf2_ros", "tf2_py",
})
# Pure-Python dependencies of rospy / rospkg / catkin_pkg, served only when the venv lacks them.
ROS_DEPENDENCIES = frozenset({"yaml", "_yaml", "defusedxml", "netifaces", "distro", "dateutil", "pyparsing",
                              "docutils", "gnupg", "Cryptodome"})

# The Debian packages docs/ros.md and scripts/ros-packages.txt name, for error messages.
INSTALL_HINT = ("apt-get install ros-core python3-rospy python3-sensor-msgs python3-geometry-msgs "
                "python3-nav-msgs python3-tf2-msgs (or: scripts/install.sh dev)")


def ros_folders() -> tuple[str, ...]:
    """Folders searched for ROS modules: $RECON_ROS_PYTHONPATH, else Debian's dist-packages."""
    env = os.environ.get("RECON_ROS_PYTHONPATH")
    if env:
        return tuple(p for p in env.split(os.pathsep) if p)
    return DEFAULT_FOLDERS


def is_ros_name(top: str) -> bool:
    """True for top-level names the finder may serve (ROS packages, message packages, rospy's deps)."""
    return top in ROS_MODULES or top in ROS_DEPENDENCIES or top.endswith("_msgs") or top.endswith("_srvs")


class SystemRosFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder serving only ROS top-level packages from the system folders (see module docstring)."""

    def __init__(self, folders: Sequence[str]) -> None:
        self.folders = [str(f) for f in folders]

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        # Submodules are found through their package's __path__ by the normal finders; only top-level
        # names reach the end of the meta path unresolved.
        if "." in fullname or not is_ros_name(fullname):
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, self.folders)

    def __repr__(self) -> str:
        return f"SystemRosFinder({self.folders})"


def enable_system_ros(folders: Sequence[str] | None = None) -> SystemRosFinder:
    """Install the finder once (idempotent) and return it."""
    for finder in sys.meta_path:
        if isinstance(finder, SystemRosFinder):
            return finder
    finder = SystemRosFinder(folders if folders is not None else ros_folders())
    sys.meta_path.append(finder)
    logger.debug("ROS modules may come from %s", finder.folders)
    return finder


def import_rospy() -> ModuleType:
    """`import rospy`, from the environment if it has it, else from the system folders; clear error if neither."""
    enable_system_ros()
    try:
        import rospy
    except ImportError as e:
        raise MissingDependencyError(
            f"rospy cannot be imported ({e}); looked in this Python's path and in {', '.join(ros_folders())}. "
            f"Install ROS 1 with: {INSTALL_HINT}"
        ) from e
    return rospy
