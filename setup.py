"""Maps the repository's top-level folders into the `loopcoder` namespace.

`model/` installs as `loopcoder.model`, `kernels/` as `loopcoder.kernels`, and so on; nothing
generic is installed at the top level of site-packages (transformers probes for a Hub package
called `kernels`). Metadata and dependencies live in pyproject.toml.
"""

from setuptools import find_namespace_packages, find_packages, setup

TOP_LEVEL_PACKAGES = ("model", "kernels", "pipelines", "postrain", "schemas", "jobs")

packages, package_dir = [], {}
for top in TOP_LEVEL_PACKAGES:
    package_dir[f"loopcoder.{top}"] = top
    packages.append(f"loopcoder.{top}")
    # jobs/ holds config folders without __init__.py (data, sft, deepspeed, ...): ship them as namespace packages
    finder = find_namespace_packages if top == "jobs" else find_packages
    packages += [f"loopcoder.{top}.{sub}" for sub in finder(top, exclude=["__pycache__", "*.__pycache__"])]

setup(packages=packages, package_dir=package_dir)
