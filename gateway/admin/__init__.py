"""Administration: the command line and the operations it shares with the web console."""
