"""kfabric: control plane for a national AI compute fabric."""

__version__ = "0.1.0"

from kfabric.native import command_process as _command_process
from kfabric.native import guard as _guard

#: "native" when the compiled scheduling core and simulator are in use, else "python" (see kfabric.native); a
#: KFABRIC_NATIVE setting that cannot be honoured raises kfabric.native.NativeBuildError here (never exits)
BUILD = _guard(defer=_command_process())
