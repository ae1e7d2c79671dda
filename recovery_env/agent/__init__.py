"""The text-mode agent of the boot media: consoles, screens, boot options, floppy, states."""
