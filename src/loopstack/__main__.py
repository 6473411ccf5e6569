"""`python -m loopstack` is the `loopstack` command."""
from loopstack.cli import main

main()
