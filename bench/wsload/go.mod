module tapeflow/bench/wsload

go 1.26

require github.com/coder/websocket v1.8.15

require github.com/valyala/fastjson v1.6.10
