"""What the rescue or host system sees: tool output parsers, disks, the machine's inventory."""
