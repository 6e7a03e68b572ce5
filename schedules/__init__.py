"""The built-in schedules: one .ppc file each, found by name (installed as package data)."""
