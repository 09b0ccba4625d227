"""kfabric: control plane for a national AI compute fabric."""

__version__ = "0.1.0"
