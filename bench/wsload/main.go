// wsload: N WebSocket clients of Tapeflow's WS /v1/stream, for bench/stream.py.
//
// Each client connects with a Bearer token, subscribes to the quotes of `-per`
// symbols (client c takes symbols c, c+stride, c+2*stride, ..., modulo -nsym, so
// every symbol has the same number of subscribers when stride*per = nsym and a
// client's symbols are spread over the feed's round-robin), and reads until SIGTERM or until
// stdin closes. For every quote it records (symbol index, event_ns, receive_ns (when
// the pipeline parsed the feed message), the wall-clock ns right after the client
// parsed the WebSocket message holding it). It checks each
// connection's sequence numbers (holes not covered by a gap event are counted).
//
// Written in Go so that 1,000 clients cost a fraction of a core and do not starve
// the server being measured on a 2-core machine.
//
// Output: -out FILE gets int64 little-endian quadruples; stdout gets "ready N" once
// every client is subscribed, then one JSON line of totals at the end.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/valyala/fastjson"
)

// The fields of an event this client counts (decode fills them).
type event struct {
	T       string
	Seq     int64
	Symbol  string
	EventNs int64
	RecvNs  int64
	FromSeq int64
	ToSeq   int64
	Dropped int64
	Code    string
}

// decode parses a frame (a JSON array of events) in full, keeping the fields counted here.
func decode(p *fastjson.Parser, data []byte, out []event) ([]event, error) {
	v, err := p.ParseBytes(data)
	if err != nil {
		return out, err
	}
	items, err := v.Array()
	if err != nil {
		return out, err
	}
	for _, it := range items {
		out = append(out, event{
			T:       string(it.GetStringBytes("T")),
			Seq:     it.GetInt64("seq"),
			Symbol:  string(it.GetStringBytes("symbol")),
			EventNs: it.GetInt64("event_ns"),
			RecvNs:  it.GetInt64("receive_ns"),
			FromSeq: it.GetInt64("from_seq"),
			ToSeq:   it.GetInt64("to_seq"),
			Dropped: it.GetInt64("dropped"),
			Code:    string(it.GetStringBytes("code")),
		})
	}
	return out, nil
}

type client struct {
	id                                int
	symbols                           []string
	recs                              []int64
	frames, events, quotes, gaps      int64
	dropped, holes, errors, closeCode int64
	subscribedAt                      time.Time
	err                               string
}

type totals struct {
	Clients      int    `json:"clients"`
	Subscribed   int    `json:"subscribed"`
	Frames       int64  `json:"frames"`
	Events       int64  `json:"events"`
	Quotes       int64  `json:"quotes"`
	Gaps         int64  `json:"gaps"`
	Dropped      int64  `json:"dropped"`
	Holes        int64  `json:"holes"`
	Errors       int64  `json:"errors"`
	ClosedBySrv  int64  `json:"closed_by_server"`
	FailedDials  int64  `json:"failed"`
	FirstFailure string `json:"first_failure"`
}

func main() {
	url := flag.String("url", "ws://127.0.0.1:8000/v1/stream", "stream URL")
	token := flag.String("token", "", "API key token <key_id>.<secret>")
	n := flag.Int("clients", 100, "clients")
	per := flag.Int("per", 10, "symbols per client")
	nsym := flag.Int("nsym", 1000, "symbols in the feed")
	prefix := flag.String("prefix", "ZQ", "symbol prefix; the rest is the index, zero-padded")
	width := flag.Int("width", 3, "digits of the symbol index")
	stride := flag.Int("stride", 100, "distance between a client's symbols")
	out := flag.String("out", "wsload.bin", "records file")
	dialers := flag.Int("dialers", 50, "concurrent connection attempts")
	expect := flag.Int("expect", 4096, "quotes a client may receive (records are allocated for them up front)")
	flag.Parse()

	ctx, cancel := context.WithCancel(context.Background())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sig; cancel() }()
	go func() { // stdin closed: stop too
		buf := make([]byte, 1)
		for {
			if _, err := os.Stdin.Read(buf); err != nil {
				cancel()
				return
			}
		}
	}()

	clients := make([]*client, *n)
	var ready sync.WaitGroup
	var done sync.WaitGroup
	var failed atomic.Int64
	sem := make(chan struct{}, *dialers)
	for i := range clients {
		// Records are allocated once: grown by append, the 1,000 clients' slices
		// doubled at the same moments, and those seconds' p99 read 3-4x the others'.
		c := &client{id: i, recs: make([]int64, 0, 4**expect)}
		for j := 0; j < *per; j++ {
			idx := (i + j**stride) % *nsym
			c.symbols = append(c.symbols, fmt.Sprintf("%s%0*d", *prefix, *width, idx))
		}
		clients[i] = c
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			sem <- struct{}{}
			run(ctx, c, *url, *token, len(*prefix), &ready, sem, &failed)
		}()
	}
	ready.Wait()
	subscribed := 0
	for _, c := range clients {
		if c.err == "" {
			subscribed++
		}
	}
	fmt.Printf("ready %d\n", subscribed)
	os.Stdout.Sync()
	done.Wait()

	f, err := os.Create(*out)
	if err != nil {
		panic(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	var t totals
	t.Clients = *n
	t.Subscribed = subscribed
	t.FailedDials = failed.Load()
	for _, c := range clients {
		binary.Write(w, binary.LittleEndian, c.recs)
		t.Frames += c.frames
		t.Events += c.events
		t.Quotes += c.quotes
		t.Gaps += c.gaps
		t.Dropped += c.dropped
		t.Holes += c.holes
		t.Errors += c.errors
		if c.closeCode != 0 {
			t.ClosedBySrv++
		}
		if c.err != "" && t.FirstFailure == "" {
			t.FirstFailure = c.err
		}
	}
	w.Flush()
	f.Close()
	line, _ := json.Marshal(t)
	fmt.Println(string(line))
}

func run(ctx context.Context, c *client, url, token string, plen int, ready *sync.WaitGroup,
	sem chan struct{}, failed *atomic.Int64) {
	readyDone := false
	markReady := func() {
		if !readyDone {
			readyDone = true
			<-sem
			ready.Done()
		}
	}
	defer markReady()
	fail := func(err error) {
		c.err = err.Error()
		failed.Add(1)
	}
	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	defer dcancel()
	dialer := ws.Dialer{Header: ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + token}})}
	conn, early, _, err := dialer.Dial(dctx, url)
	if err != nil {
		fail(err)
		return
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	sub, _ := json.Marshal(map[string]any{"action": "subscribe", "quotes": c.symbols})
	if err := wsutil.WriteClientText(conn, sub); err != nil {
		fail(err)
		return
	}
	// One buffered reader per connection: a read() often brings several frames.
	var src io.Reader = conn
	if early != nil { // bytes the server sent right behind its handshake answer
		src = io.MultiReader(early, conn)
	}
	rd := bufio.NewReaderSize(src, 64<<10)
	var expect int64 = 1
	// A parser per client, reused: encoding/json's reflection cost this process more
	// CPU than the server it measures.
	var parser fastjson.Parser
	var msg []byte // the message being read (a server may fragment one)
	var batch []event
	quit := func(err error) {
		if ctx.Err() == nil && c.err == "" {
			c.err = err.Error()
		}
	}
	for {
		h, err := ws.ReadHeader(rd)
		if err != nil {
			quit(err)
			return
		}
		if h.Length > 64<<20 {
			quit(fmt.Errorf("frame of %d bytes", h.Length))
			return
		}
		if h.OpCode.IsControl() {
			payload := make([]byte, h.Length)
			if _, err := io.ReadFull(rd, payload); err != nil {
				quit(err)
				return
			}
			if h.Masked {
				ws.Cipher(payload, h.Mask, 0)
			}
			switch h.OpCode {
			case ws.OpPing:
				if err := ws.WriteFrame(conn, ws.MaskFrameInPlace(ws.NewPongFrame(payload))); err != nil {
					quit(err)
					return
				}
			case ws.OpClose:
				code, reason := ws.ParseCloseFrameData(payload)
				if ctx.Err() == nil {
					c.closeCode = int64(code)
					if c.err == "" {
						c.err = fmt.Sprintf("closed by the server: %d %s", code, reason)
					}
				}
				_ = ws.WriteFrame(conn, ws.MaskFrameInPlace(ws.NewCloseFrame(ws.NewCloseFrameBody(code, ""))))
				return
			}
			continue
		}
		if h.OpCode != ws.OpContinuation {
			msg = msg[:0]
		}
		n := len(msg)
		if cap(msg) < n+int(h.Length) {
			grown := make([]byte, n, 2*(n+int(h.Length)))
			copy(grown, msg)
			msg = grown
		}
		msg = msg[:n+int(h.Length)]
		if _, err := io.ReadFull(rd, msg[n:]); err != nil {
			quit(err)
			return
		}
		if h.Masked {
			ws.Cipher(msg[n:], h.Mask, 0)
		}
		if !h.Fin {
			continue
		}
		var perr error
		batch, perr = decode(&parser, msg, batch[:0])
		if perr != nil {
			c.errors++
			continue
		}
		now := time.Now().UnixNano()
		c.frames++
		for i := range batch {
			e := &batch[i]
			c.events++
			if e.T == "gap" {
				c.gaps++
				c.dropped += e.Dropped
				if e.FromSeq == expect {
					expect = e.ToSeq + 1
				}
			}
			if e.Seq != expect {
				c.holes++
			}
			expect = e.Seq + 1
			switch e.T {
			case "q":
				c.quotes++
				if idx, err := strconv.Atoi(e.Symbol[plen:]); err == nil {
					c.recs = append(c.recs, int64(idx), e.EventNs, e.RecvNs, now)
				}
			case "subscription":
				c.subscribedAt = time.Now()
				markReady()
			case "error":
				c.errors++
				if c.err == "" {
					c.err = "error event: " + e.Code
				}
			}
		}
	}
}
