"""One module per paper table; importing this package registers them all."""
