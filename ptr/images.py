"""The container images ptr runs in, named once: ``images/Dockerfile.cpu`` builds ``ptr``,
``images/Dockerfile.gpu`` builds ``ptr-gpu`` (``make images``), tagged with the package version."""

from ptr import __version__

DEFAULT_IMAGE = f"ptr:{__version__}"
DEFAULT_GPU_IMAGE = f"ptr-gpu:{__version__}"
