"""WS /v1/stream: live quotes, trades, 1-minute bars and trading status.

One module per job:
- config: the stream's settings (TAPEFLOW_STREAM_*)
- protocol: client actions parsed and validated; event encoding; error and close codes
- subscriptions: one connection's subscription set and its limits
- pubsub: the process's single Redis pub/sub connection (hiredis, asyncio)
- hub: per process: refcounted Redis subscriptions, fan-out to sessions, staleness
- session: per connection: pending events, conflation, sequence numbers, batching, gaps
- slots: connections per API key, counted in Redis across processes
- clock: is the market open (XNYS), for stale markers
- peer: the connection's transport, to abort a client that stopped reading
- route: the FastAPI router; app: a stream-only app for separate API processes
The protocol itself is documented in README.md ("Streaming").
"""
