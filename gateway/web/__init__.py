"""The web console: try an enhancer on one uploaded image, and watch the gateway's jobs.

Why a separate process (`enhance-gateway web`, or `python -m gateway.web`): it reads the gateway's state and
spool through the same `State` and `Spool` interfaces as the service, so it can be started, restarted or left
off without touching reception, and an upload enhanced here never enters the gateway's queue.
"""
