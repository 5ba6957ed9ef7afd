"""`blat`: the one command line. Thin subcommands over the layers (see blat_cli/main.py)."""
