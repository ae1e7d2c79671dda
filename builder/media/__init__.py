"""The boot media: packages, kernel modules, rescue tree, initramfs, boot loaders, FAT images, ISO."""
