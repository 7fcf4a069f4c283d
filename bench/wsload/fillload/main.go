// fillload: order-to-fill latency through the whole stack, for bench/fills.py.
//
// One WebSocket per account (token) subscribed to trade_updates; orders posted at a
// fixed total rate (open loop) through POST /v1/orders, round-robin over the accounts,
// by a pool of HTTP workers. For every order it records when the 200 answer was read
// (the API's durable acknowledgement) and when the first fill event of that order was
// parsed from the account's WebSocket. Written in Go so the load costs little CPU next
// to the stack it measures on a 2-core machine.
//
// Output, on stdout: "ready" once every socket is subscribed, then at the end one line
// per order: "<order id> <ack unix ns> <first fill unix ns or 0> <http status>".
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

type record struct {
	ack    int64
	fill   int64
	status int
}

type book struct {
	mu     sync.Mutex
	orders map[string]*record
	early  map[string]int64 // fills that arrived before their order's answer
}

func (b *book) acked(id string, at int64, status int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := &record{ack: at, status: status}
	if f, ok := b.early[id]; ok {
		r.fill = f
		delete(b.early, id)
	}
	b.orders[id] = r
}

func (b *book) filled(id string, at int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if r, ok := b.orders[id]; ok {
		if r.fill == 0 {
			r.fill = at
		}
		return
	}
	if _, ok := b.early[id]; !ok {
		b.early[id] = at
	}
}

type frameEvent struct {
	T    string `json:"T"`
	Data struct {
		Event string `json:"event"`
		Order struct {
			ID string `json:"id"`
		} `json:"order"`
	} `json:"data"`
}

func listen(ctx context.Context, url, token string, b *book, ready *sync.WaitGroup) {
	conn, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + token}},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(2)
	}
	conn.SetReadLimit(1 << 24)
	sub := []byte(`{"action":"subscribe","trade_updates":true}`)
	if err := conn.Write(ctx, websocket.MessageText, sub); err != nil {
		fmt.Fprintln(os.Stderr, "subscribe:", err)
		os.Exit(2)
	}
	subscribed := false
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			if !subscribed {
				ready.Done()
			}
			return
		}
		now := time.Now().UnixNano()
		var events []frameEvent
		if json.Unmarshal(data, &events) != nil {
			continue
		}
		for _, e := range events {
			switch {
			case e.T == "subscription" && !subscribed:
				subscribed = true
				ready.Done()
			case e.T == "trade_update" && (e.Data.Event == "fill" || e.Data.Event == "partial_fill"):
				b.filled(e.Data.Order.ID, now)
			}
		}
	}
}

func main() {
	api := flag.String("api", "http://127.0.0.1:8000", "REST base URL")
	ws := flag.String("ws", "ws://127.0.0.1:8000/v1/stream", "stream URL")
	tokensFile := flag.String("tokens", "", "file of Bearer tokens, one per account")
	rate := flag.Float64("rate", 1000, "orders per second, all accounts together")
	seconds := flag.Float64("seconds", 10, "how long to send")
	drain := flag.Float64("drain", 5, "seconds to wait for fills after the last order")
	symbols := flag.String("symbols", "AAPL", "comma-separated symbols, round-robin")
	workers := flag.Int("workers", 64, "concurrent HTTP requests at most")
	flag.Parse()

	raw, err := os.ReadFile(*tokensFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	tokens := strings.Fields(string(raw))
	syms := strings.Split(*symbols, ",")
	b := &book{orders: map[string]*record{}, early: map[string]int64{}}
	ctx, cancel := context.WithCancel(context.Background())
	var ready sync.WaitGroup
	for _, t := range tokens {
		ready.Add(1)
		go listen(ctx, *ws, t, b, &ready)
	}
	ready.Wait()
	fmt.Println("ready")

	transport := &http.Transport{MaxIdleConnsPerHost: *workers, MaxConnsPerHost: *workers}
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	jobs := make(chan int, 100000)
	var posting sync.WaitGroup
	for w := 0; w < *workers; w++ {
		posting.Add(1)
		go func() {
			defer posting.Done()
			for n := range jobs {
				body := fmt.Sprintf(`{"symbol":"%s","side":"buy","type":"market","time_in_force":"day","qty":"1"}`, syms[n%len(syms)])
				req, _ := http.NewRequest("POST", *api+"/v1/orders", bytes.NewBufferString(body))
				req.Header.Set("Authorization", "Bearer "+tokens[n%len(tokens)])
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					continue
				}
				answer, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				at := time.Now().UnixNano()
				var order struct {
					ID string `json:"id"`
				}
				if json.Unmarshal(answer, &order) == nil && order.ID != "" {
					b.acked(order.ID, at, resp.StatusCode)
				}
			}
		}()
	}
	start := time.Now()
	total := int(*rate * *seconds)
	for n := 0; n < total; n++ {
		due := start.Add(time.Duration(float64(n) / *rate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		jobs <- n
	}
	close(jobs)
	posting.Wait()
	time.Sleep(time.Duration(*drain * float64(time.Second)))
	cancel()
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	b.mu.Lock()
	for id, r := range b.orders {
		fmt.Fprintf(out, "%s %d %d %d\n", id, r.ack, r.fill, r.status)
	}
	b.mu.Unlock()
	out.Flush()
}
