"""The `deploywise` command line: the top layer beside the pages; it calls engine, training and eval."""
