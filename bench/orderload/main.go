// orderload: N concurrent HTTP clients placing orders through POST /v1/orders.
//
// Each client is a goroutine with its own keep-alive connection that posts the next
// order as soon as the previous one is answered (closed loop). Every answer is written
// to stdout as "<start unix ns> <latency ns> <status>", then a summary line on stderr.
// Go so that the clients cost little CPU next to the server on a 2-core machine.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

type sample struct {
	start   int64
	latency int64
	status  int
}

func main() {
	url := flag.String("url", "http://127.0.0.1:8000/v1/orders", "endpoint")
	token := flag.String("token", "", "Bearer token")
	tokensFile := flag.String("tokens", "", "file of Bearer tokens, one per line: client c uses line c mod n")
	clients := flag.Int("clients", 50, "concurrent clients")
	seconds := flag.Float64("seconds", 10, "how long to send")
	symbol := flag.String("symbol", "AAPL", "symbol to order")
	price := flag.String("price", "10.00", "limit price (rests below the market)")
	idem := flag.Bool("idempotency", false, "send an Idempotency-Key with every order")
	flag.Parse()

	tokens := []string{*token}
	if *tokensFile != "" {
		raw, err := os.ReadFile(*tokensFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		tokens = strings.Fields(string(raw))
	}
	transport := &http.Transport{MaxIdleConnsPerHost: *clients, MaxConnsPerHost: *clients}
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	deadline := time.Now().Add(time.Duration(*seconds * float64(time.Second)))
	results := make([][]sample, *clients)
	var wg sync.WaitGroup
	for c := 0; c < *clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for n := 0; time.Now().Before(deadline); n++ {
				body := fmt.Sprintf(`{"symbol":"%s","side":"buy","type":"limit","time_in_force":"day","qty":"1","limit_price":"%s"}`, *symbol, *price)
				req, _ := http.NewRequest("POST", *url, bytes.NewBufferString(body))
				req.Header.Set("Authorization", "Bearer "+tokens[c%len(tokens)])
				req.Header.Set("Content-Type", "application/json")
				if *idem {
					req.Header.Set("Idempotency-Key", fmt.Sprintf("load-%d-%d-%d", os.Getpid(), c, n))
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				status := 0
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				}
				results[c] = append(results[c], sample{t0.UnixNano(), time.Since(t0).Nanoseconds(), status})
			}
		}(c)
	}
	wg.Wait()
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	total := 0
	for _, rs := range results {
		for _, s := range rs {
			fmt.Fprintf(out, "%d %d %d\n", s.start, s.latency, s.status)
			total++
		}
	}
	out.Flush()
	fmt.Fprintf(os.Stderr, "orderload: %d requests from %d clients\n", total, *clients)
}
