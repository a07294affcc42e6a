"""Maps the top-level folders into the one `recon` namespace (DESIGN.md §2).

`nodes/`, `kernels/`, `calib/`, `datasets/` and `viewer/` install as `recon.nodes`, `recon.kernels`, ...
so nothing generic such as `datasets` lands at the top level of site-packages.
"""

from setuptools import find_packages, setup

FOLDERS = {"recon": "recon", "recon.nodes": "nodes", "recon.kernels": "kernels", "recon.calib": "calib",
           "recon.datasets": "datasets", "recon.viewer": "viewer"}

packages: list[str] = []
package_dir: dict[str, str] = {}
for name, folder in FOLDERS.items():
    package_dir[name] = folder
    packages.append(name)
    for sub in find_packages(where=folder):
        packages.append(f"{name}.{sub}")
        package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir, include_package_data=True,
      package_data={"recon.datasets": ["sample/*.md"]})
