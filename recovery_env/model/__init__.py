"""The descriptor model and its text forms (ASR.SIF, ASRPNP.SIF): typed, versioned, validated."""
