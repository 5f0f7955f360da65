"""OAuth and session tokens: the vendors' token files, their refresh, and one refresher per credential."""
