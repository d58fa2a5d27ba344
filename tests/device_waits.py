"""Count what makes the host wait for a device: reading a device tensor's value (`.item()`, `bool()`,
`int()`) and a blocking copy between the host and the device. Run on the meta device, where every such copy
or read is seen by the dispatcher (on a CPU there is no device to wait for)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class DeviceWaits(TorchDispatchMode):
    """While active, ``waits`` lists each value read from a non-CPU tensor and each blocking copy between
    devices, as (kind, operator name)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type != "cpu":
            self.waits.append(("read", str(func)))
        elif func is torch.ops.aten._to_copy.default:
            target = kwargs.get("device") or args[0].device
            if torch.device(target) != args[0].device and not kwargs.get("non_blocking", False):
                self.waits.append(("copy", str(func)))
        elif func is torch.ops.aten.copy_.default:
            non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
            if args[0].device != args[1].device and not non_blocking:
                self.waits.append(("copy", str(func)))
        return func(*args, **kwargs)
