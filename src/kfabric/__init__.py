"""kfabric: control plane for a national AI compute fabric."""

__version__ = "0.1.0"

from kfabric.native import guard as _guard

#: "native" when the compiled scheduling core and simulator are in use, else "python" (see kfabric.native)
BUILD = _guard()
