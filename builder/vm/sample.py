"""The embedded sample system "asr-sample": the descriptor and device inventory `asr build` uses without
``--descriptor`` (and the demo shows after F2).

A QEMU i440fx/PIIX3 machine with SeaBIOS, one 2 GiB GPT disk laid out the way a hybrid BIOS/UEFI Debian image is:
a 1 MiB BIOS boot partition for grub-bios' core image, a 255 MiB EFI system partition (FAT16, mounted at
/boot/efi, present so the same disk also boots under UEFI), and an ext4 root that fills the rest of the disk up
to the backup GPT.  The backup set and its checksums are fixed values and ``captured_at`` is fixed, so the media
built from the sample are reproducible.
"""

from __future__ import annotations

from recovery_env.model.descriptor import (
    GPT_BIOS_BOOT,
    GPT_ESP,
    Archive,
    BackupSet,
    Bootloader,
    BootloaderKind,
    Command,
    Compression,
    Descriptor,
    Device,
    DeviceInventory,
    Disk,
    Filesystem,
    Firmware,
    FstabSpec,
    FsType,
    Mount,
    PartFlag,
    Partition,
    SystemInfo,
    TableType,
)

HOSTNAME = "asr-sample"
CAPTURED_AT = "2026-01-01T00:00:00Z"
TOOL_VERSION = "asr 0.1.0"
GPT_LINUX_ROOT_X86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
_MIB = 1024 * 1024


def sample_system(firmware: Firmware = Firmware.BIOS) -> SystemInfo:
    return SystemInfo(
        hostname=HOSTNAME,
        machine_id="5d3e4c1f0a9b48e2b7c6d5a4f3e2d1c0",
        architecture="x86_64",
        firmware=firmware,
        kernel="6.1.0-28-amd64",
        os_release="Debian GNU/Linux 12 (bookworm)",
        captured_at=CAPTURED_AT,
        tool_version=TOOL_VERSION,
    )


def sample_descriptor() -> Descriptor:
    """The sample machine: BIOS firmware, grub-bios on a GPT disk that also carries an ESP."""
    disk = Disk(
        key="disk1",
        size_bytes=2048 * _MIB,
        logical_sector_size=512,
        physical_sector_size=512,
        table=TableType.GPT,
        disk_id="8c2f6a1e-3b7d-4e59-a0c4-2d9e7f1b5a63",
        critical=True,
        device="/dev/sda",
        model="QEMU HARDDISK",
        serial="QM00001",
        by_id=("ata-QEMU_HARDDISK_QM00001",),
    )
    root_start = 4096 + 255 * 2048
    partitions = (
        Partition(
            disk="disk1",
            number=1,
            start=2048,
            size=2048,
            type=GPT_BIOS_BOOT,
            partuuid="3f1c9d2a-6e4b-4a7f-8d05-b1c2e3f4a5b6",
            name="BIOS boot",
            flags=(PartFlag.BIOS_GRUB,),
        ),
        Partition(
            disk="disk1",
            number=2,
            start=4096,
            size=255 * 2048,
            type=GPT_ESP,
            partuuid="a7e4c2b1-0d9f-4c3e-9b8a-7f6e5d4c3b2a",
            name="EFI System",
            flags=(PartFlag.ESP,),
        ),
        Partition(
            disk="disk1",
            number=3,
            start=root_start,
            size=disk.last_usable - root_start + 1,
            type=GPT_LINUX_ROOT_X86_64,
            partuuid="e1d2c3b4-a596-4788-99aa-bbccddeeff01",
            name="root",
        ),
    )
    filesystems = (
        Filesystem(key="fs1", partition="disk1p2", type=FsType.VFAT, uuid="5A3C-19E2", label="EFI", fat_size=16),
        Filesystem(
            key="fs2",
            partition="disk1p3",
            type=FsType.EXT4,
            uuid="0b6f2d8e-4c1a-4f7b-9e3d-5a8c1b2e7f40",
            label="asr-root",
            block_size=4096,
            features=("has_journal", "extent", "64bit", "metadata_csum"),
            inode_size=256,
        ),
    )
    mounts = (
        Mount("/", "fs2", "errors=remount-ro", FstabSpec.UUID, "UUID=0b6f2d8e-4c1a-4f7b-9e3d-5a8c1b2e7f40", 0, 1),
        Mount("/boot/efi", "fs1", "umask=0077", FstabSpec.UUID, "UUID=5A3C-19E2", 0, 2),
    )
    backup = BackupSet(
        media_label="ASRBACKUP",
        media_uuid="6e0d7c1b-2a3f-4b5c-8d9e-0f1a2b3c4d5e",
        path="/asr/asr-sample-20260101",
        compression=Compression.ZSTD,
        manifest="MANIFEST",
        manifest_sha256="4a1f0c7e9b3d5f2a8c6e0b4d7f1a3c5e9b2d4f6a8c0e1b3d5f7a9c2e4b6d8f01",
        file_count=31874,
        archives=(
            Archive(
                "fs1",
                "fs1.tar.zst",
                4_812_337,
                "9c1e3a5b7d9f0b2d4f6a8c0e2b4d6f8a1c3e5b7d9f1a3c5e7b9d0f2a4c6e8b01",
                entries=42,
            ),
            Archive(
                "fs2",
                "fs2.tar.zst",
                312_884_913,
                "2e4c6a8b0d2f4e6a8c0b2d4f6e8a0c2b4d6f8e0a2c4b6d8f0e2a4c6b8d0f2e03",
                entries=31830,
            ),
        ),
    )
    return Descriptor(
        system=sample_system(),
        disks=(disk,),
        partitions=partitions,
        filesystems=filesystems,
        mounts=mounts,
        bootloader=Bootloader(
            BootloaderKind.GRUB_BIOS, disk="disk1", esp_mountpoint="/boot/efi", efi_directory="debian"
        ),
        backup=backup,
        commands=(
            Command(1, "update-initramfs -u -k all", critical=True),
            Command(2, "systemctl enable ssh.service"),
        ),
    )


def sample_descriptor_mbr() -> Descriptor:
    """A variant of the sample on an MBR disk: an active /boot, an extended partition holding swap and the root,
    grub-bios in the MBR, no backup set."""
    disk = Disk(
        key="disk1",
        size_bytes=2048 * _MIB,
        logical_sector_size=512,
        physical_sector_size=512,
        table=TableType.MBR,
        disk_id="0x5a3c19e2",
        critical=True,
        device="/dev/sda",
        model="QEMU HARDDISK",
        serial="QM00001",
        by_id=("ata-QEMU_HARDDISK_QM00001",),
    )
    partitions = (
        Partition("disk1", 1, 2048, 256 * 2048, "83", partuuid="5a3c19e2-01", flags=(PartFlag.BOOT,)),
        Partition("disk1", 2, 258 * 2048, disk.size_sectors - 258 * 2048, "05", partuuid="5a3c19e2-02"),
        Partition("disk1", 5, 259 * 2048, 256 * 2048, "82", partuuid="5a3c19e2-05"),
        Partition("disk1", 6, 516 * 2048, disk.size_sectors - 516 * 2048, "83", partuuid="5a3c19e2-06"),
    )
    filesystems = (
        Filesystem("fs1", "disk1p1", FsType.EXT4, uuid="1d3f5b7a-9c0e-4a2b-8d4f-6a8c0e2b4d61", label="boot"),
        Filesystem("fs2", "disk1p5", FsType.SWAP, uuid="7c9e1a3b-5d7f-4b0c-9e2a-4c6e8a0b2d43", backup=False),
        Filesystem("fs3", "disk1p6", FsType.EXT4, uuid="3b5d7f9a-1c3e-4d5f-a7b9-c1d3e5f7a9b2", label="asr-root"),
    )
    mounts = (
        Mount("/", "fs3", "errors=remount-ro", FstabSpec.UUID, "UUID=3b5d7f9a-1c3e-4d5f-a7b9-c1d3e5f7a9b2", 0, 1),
        Mount("/boot", "fs1", "defaults", FstabSpec.LABEL, "LABEL=boot", 0, 2),
        Mount("swap", "fs2", "sw", FstabSpec.UUID, "UUID=7c9e1a3b-5d7f-4b0c-9e2a-4c6e8a0b2d43"),
    )
    return Descriptor(
        system=sample_system(),
        disks=(disk,),
        partitions=partitions,
        filesystems=filesystems,
        mounts=mounts,
        bootloader=Bootloader(BootloaderKind.GRUB_BIOS, disk="disk1"),
    )


def sample_inventory() -> DeviceInventory:
    """The sample machine's devices: QEMU's i440fx board with PIIX3 IDE, an ICH9 AHCI controller, virtio disk
    and network, the standard VGA and the floppy controller (real ids and modaliases)."""
    sub = "sv00001AF4sd00001100"
    return DeviceInventory(
        hostname=HOSTNAME,
        devices=(
            Device(
                "pci",
                "0000:00:00.0",
                "8086",
                "1237",
                "0x060000",
                f"pci:v00008086d00001237{sub}bc06sc00i00",
                description="Intel 440FX - 82441FX PMC [Natoma]",
            ),
            Device(
                "pci",
                "0000:00:01.0",
                "8086",
                "7000",
                "0x060100",
                f"pci:v00008086d00007000{sub}bc06sc01i00",
                description="Intel 82371SB PIIX3 ISA [Natoma/Triton II]",
            ),
            Device(
                "pci",
                "0000:00:01.1",
                "8086",
                "7010",
                "0x010180",
                f"pci:v00008086d00007010{sub}bc01sc01i80",
                driver="ata_piix",
                modules=("ata_piix",),
                description="Intel 82371SB PIIX3 IDE [Natoma/Triton II]",
            ),
            Device(
                "pci",
                "0000:00:01.3",
                "8086",
                "7113",
                "0x068000",
                f"pci:v00008086d00007113{sub}bc06sc80i00",
                driver="piix4_smbus",
                modules=("i2c_piix4",),
                description="Intel 82371AB/EB/MB PIIX4 ACPI",
            ),
            Device(
                "pci",
                "0000:00:02.0",
                "1234",
                "1111",
                "0x030000",
                f"pci:v00001234d00001111{sub}bc03sc00i00",
                driver="bochs-drm",
                modules=("bochs",),
                description="QEMU standard VGA",
            ),
            Device(
                "pci",
                "0000:00:03.0",
                "1af4",
                "1000",
                "0x020000",
                "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
                driver="virtio-pci",
                modules=("virtio_pci",),
                description="Red Hat virtio network device",
            ),
            Device(
                "pci",
                "0000:00:04.0",
                "8086",
                "2922",
                "0x010601",
                f"pci:v00008086d00002922{sub}bc01sc06i01",
                driver="ahci",
                modules=("ahci",),
                description="Intel 82801IR/IO/IH (ICH9R/DO/DH) 6 port SATA AHCI",
            ),
            Device(
                "pci",
                "0000:00:05.0",
                "1af4",
                "1001",
                "0x010000",
                "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
                driver="virtio-pci",
                modules=("virtio_pci",),
                description="Red Hat virtio block device",
            ),
            Device(
                "virtio",
                "virtio0",
                "1af4",
                "0001",
                "",
                "virtio:d00000001v00001AF4",
                driver="virtio_net",
                modules=("virtio_net",),
                description="virtio network",
            ),
            Device(
                "virtio",
                "virtio1",
                "1af4",
                "0002",
                "",
                "virtio:d00000002v00001AF4",
                driver="virtio_blk",
                modules=("virtio_blk",),
                description="virtio block",
            ),
            Device(
                "acpi",
                "PNP0700:00",
                modalias="acpi:PNP0700:",
                driver="floppy",
                modules=("floppy",),
                description="PC standard floppy disk controller",
            ),
        ),
    )
