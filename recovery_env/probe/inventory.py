"""The machine's devices (ASRPNP.SIF): what is on the PCI, USB and virtio buses and which driver runs each, so the
rescue system can carry those drivers.

Read from sysfs only (standard library, no lspci): for every device of ``/sys/bus/{pci,usb,virtio}/devices``
its ids, class, modalias and the driver bound to it (the ``driver`` link).  The kernel modules that provide the
driver come from ``/sys/bus/*/drivers/NAME/module`` (the driver is a module) or, when the driver is not bound or
is built in, from the modalias matched against ``modules.alias`` of the running kernel (when there is one).  A
built-in driver with no modules.alias match keeps ``modules`` empty and only ``driver`` names it.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from recovery_env.model.descriptor import Device, DeviceInventory

# Bus → how its sysfs attributes are read.  USB interfaces ("1-1:1.0") carry the driver; devices ("1-1") the ids.
BUSES: tuple[str, ...] = ("pci", "usb", "virtio")


@dataclass(frozen=True)
class AliasTable:
    """modules.alias: (pattern, module) in file order."""

    rules: tuple[tuple[str, str], ...] = ()

    def find_modules(self, modalias: str) -> tuple[str, ...]:
        if not modalias:
            return ()
        seen: dict[str, None] = {}
        for pattern, module in self.rules:
            if fnmatch.fnmatchcase(modalias, pattern):
                seen.setdefault(module, None)
        return tuple(seen)


def parse_modules_alias(text: str) -> AliasTable:
    rules = []
    for line in text.splitlines():
        f = line.split()
        if len(f) == 3 and f[0] == "alias":
            rules.append((f[1], f[2]))
    return AliasTable(tuple(rules))


def _hex_id(raw: str, digits: int = 4) -> str:
    """sysfs "0x8086" / "8086" → "8086" (lower case)."""
    v = raw.strip().lower().removeprefix("0x")
    try:
        return f"{int(v, 16):0{digits}x}" if v else ""
    except ValueError:
        return ""


def make_device(bus: str, address: str, attrs: Mapping[str, str], driver: str, driver_module: str,
                aliases: AliasTable) -> Device:
    """A Device record from a device's sysfs attributes (pure)."""
    modalias = attrs.get("modalias", "").strip()
    if bus == "usb":
        vendor, device = _hex_id(attrs.get("idVendor", "")), _hex_id(attrs.get("idProduct", ""))
        cls = attrs.get("bInterfaceClass", "") or attrs.get("bDeviceClass", "")
        device_class = f"0x{int(cls, 16):02x}0000" if cls.strip() else ""
    else:
        vendor, device = _hex_id(attrs.get("vendor", "")), _hex_id(attrs.get("device", ""))
        raw_class = attrs.get("class", "").strip().lower()
        device_class = f"0x{int(raw_class, 16):06x}" if raw_class.startswith("0x") else ""
    modules: tuple[str, ...] = (driver_module,) if driver_module else aliases.find_modules(modalias)
    return Device(
        bus=bus,
        address=address,
        vendor=vendor,
        device=device,
        device_class=device_class,
        modalias=modalias,
        driver=driver,
        modules=modules,
        description=attrs.get("product", "").strip(),
    )


def make_inventory(hostname: str, devices: Iterable[Device]) -> DeviceInventory:
    return DeviceInventory(hostname=hostname, devices=tuple(sorted(devices, key=lambda d: (BUSES.index(d.bus)
                                                                                           if d.bus in BUSES else 99,
                                                                                           d.address))))


# --------------------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------------------

ATTR_NAMES = ("vendor", "device", "class", "modalias", "idVendor", "idProduct", "bDeviceClass", "bInterfaceClass",
              "product")


def read_attrs(dev: Path, names: Sequence[str] = ATTR_NAMES) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = (dev / n).read_text(errors="replace").strip()
        except OSError:
            continue
    return out


def read_driver(dev: Path) -> tuple[str, str]:
    """(driver name, module name or "") of a sysfs device."""
    link = dev / "driver"
    if not link.is_symlink():
        return "", ""
    drv = Path(os.path.realpath(link))
    mod = drv / "module"
    return drv.name, (Path(os.path.realpath(mod)).name if mod.is_symlink() else "")


def read_alias_table(modules_dir: Path | None = None) -> AliasTable:
    if modules_dir is None:
        modules_dir = Path("/lib/modules") / os.uname().release
    try:
        return parse_modules_alias((modules_dir / "modules.alias").read_text(errors="replace"))
    except OSError:
        return AliasTable()


def read_devices(sys_dir: Path = Path("/sys"), aliases: AliasTable | None = None) -> tuple[Device, ...]:
    aliases = aliases if aliases is not None else read_alias_table()
    out = []
    for bus in BUSES:
        base = sys_dir / "bus" / bus / "devices"
        if not base.is_dir():
            continue
        for dev in sorted(base.iterdir()):
            if bus == "usb" and not (dev / "modalias").exists() and not (dev / "idVendor").exists():
                continue
            attrs = read_attrs(dev)
            if bus == "usb" and ":" in dev.name:  # an interface: ids from its parent device
                parent = read_attrs(Path(os.path.realpath(dev)).parent)
                attrs = {**{k: v for k, v in parent.items() if k in ("idVendor", "idProduct", "product")}, **attrs}
            driver, module = read_driver(dev)
            out.append(make_device(bus, dev.name, attrs, driver, module, aliases))
    return tuple(out)


def read_inventory(hostname: str, sys_dir: Path = Path("/sys")) -> DeviceInventory:
    return make_inventory(hostname, read_devices(sys_dir))
