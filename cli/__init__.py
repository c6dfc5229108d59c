"""Command-line interface: parse, build options, call one library function, print."""
