"""Sources and targets: block devices and regular files (sync code, run in threads)."""

from .device import DeviceInfo, device_info, is_block_device, list_block_devices
from .source import Source
from .target import Target

__all__ = ["DeviceInfo", "Source", "Target", "device_info", "is_block_device", "list_block_devices"]
