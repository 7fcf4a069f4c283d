module tapeflow/bench/orderload

go 1.26
