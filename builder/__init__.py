"""Host side of asr: capture (`asr backup`), media build (`asr build`), QEMU launcher (`asr boot`)."""
