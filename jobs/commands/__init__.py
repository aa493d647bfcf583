"""One module per `loopcoder` command group, each exposing `register(subparsers)`."""
