package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/examples/server/app"
)

// httpDriver asks the questions over HTTP, POST /v1/chat, round robin
// over the targets. A learner is identified as the server expects: by a
// bearer token signed with AUTH_SECRET when one is given, else by the
// anonymous-learner cookie the server sets on its first answer.
type httpDriver struct {
	targets []string
	secret  []byte
	timeout time.Duration
	hc      *http.Client
	next    atomic.Uint64

	mu      sync.Mutex
	cookies map[string]string // learner → cookie value
	tokens  map[string]string
}

func newHTTPDriver(targets []string, secret string, timeout time.Duration) *httpDriver {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        4096,
		MaxIdleConnsPerHost: 4096,
		IdleConnTimeout:     90 * time.Second,
	}
	d := &httpDriver{targets: targets, timeout: timeout, hc: &http.Client{Transport: tr, Timeout: timeout},
		cookies: map[string]string{}, tokens: map[string]string{}}
	if secret != "" {
		d.secret = []byte(secret)
	}
	return d
}

type chatBody struct {
	CourseID        string  `json:"course_id"`
	VideoURL        string  `json:"video_url"`
	Message         string  `json:"message"`
	PositionSeconds float64 `json:"position_seconds"`
}

type chatReply struct {
	Degraded bool     `json:"degraded"`
	Reasons  []string `json:"reasons"`
	Code     string   `json:"code"`
	Reason   string   `json:"reason"`
}

func (d *httpDriver) ask(ctx context.Context, l *learner, req chat.Request) turnRecord {
	target := d.targets[d.next.Add(1)%uint64(len(d.targets))]
	body, _ := json.Marshal(chatBody{CourseID: req.CourseID, VideoURL: req.VideoURL, Message: req.Message, PositionSeconds: req.Position.Seconds()})
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, target+"/v1/chat", bytes.NewReader(body))
	if err != nil {
		return turnRecord{out: outError, kind: "request: " + err.Error()}
	}
	hr.Header.Set("Content-Type", "application/json")
	d.identify(hr, l.id)
	start := time.Now()
	resp, err := d.hc.Do(hr)
	var rec turnRecord
	if err != nil {
		rec.took = time.Since(start)
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil:
			rec.out = outTimeout
		case ctx.Err() != nil:
			rec.out, rec.kind = outError, "canceled at stop"
		default:
			rec.out, rec.kind = outError, "transport: "+shortErr(err)
		}
		return rec
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	_ = resp.Body.Close()
	rec.took = time.Since(start)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			rec.out = outTimeout
		} else {
			rec.out, rec.kind = outError, "reading the body: "+shortErr(err)
		}
		return rec
	}
	d.remember(l.id, resp)
	var cr chatReply
	_ = json.Unmarshal(raw, &cr)
	switch {
	case rec.took > d.timeout:
		rec.out = outTimeout
	case resp.StatusCode == http.StatusOK && cr.Degraded:
		rec.out, rec.reasons = outDegraded, cr.Reasons
	case resp.StatusCode == http.StatusOK:
		rec.out = outOK
	case resp.StatusCode == http.StatusTooManyRequests:
		rec.out = outRateLimited
		if s, err := strconv.ParseFloat(resp.Header.Get("Retry-After"), 64); err == nil {
			rec.retry, rec.hasRetry = time.Duration(s*float64(time.Second)), true
		}
	default:
		rec.out = outError
		rec.kind = fmt.Sprintf("http %d %s", resp.StatusCode, strings.TrimSpace(cr.Code+" "+cr.Reason))
	}
	return rec
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

// identify sets the learner's identity on a request.
func (d *httpDriver) identify(r *http.Request, id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.secret != nil {
		tok, ok := d.tokens[id]
		if !ok {
			tok = app.SignToken(d.secret, id, 24*time.Hour, time.Now())
			d.tokens[id] = tok
		}
		r.Header.Set("Authorization", "Bearer "+tok)
		return
	}
	if v, ok := d.cookies[id]; ok {
		r.AddCookie(&http.Cookie{Name: app.LearnerCookie, Value: v})
	}
}

// remember keeps the anonymous learner's cookie from the server's answer.
func (d *httpDriver) remember(id string, resp *http.Response) {
	if d.secret != nil {
		return
	}
	for _, c := range resp.Cookies() {
		if c.Name == app.LearnerCookie {
			d.mu.Lock()
			d.cookies[id] = c.Value
			d.mu.Unlock()
		}
	}
}

// serverCatalog reads the videos a server offers (GET /v1/config); nil
// when it lists none (a server on MongoDB), and the generated IDs are used.
func serverCatalog(ctx context.Context, target string) ([][][2]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target+"/v1/config", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var cfg struct {
		Videos []app.Video `json:"videos"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&cfg); err != nil {
		return nil, fmt.Errorf("%s/v1/config: %w", target, err)
	}
	var out [][][2]string
	index := map[string]int{}
	for _, v := range cfg.Videos {
		i, ok := index[v.CourseID]
		if !ok {
			i = len(out)
			index[v.CourseID] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], [2]string{v.CourseID, v.VideoURL})
	}
	return out, nil
}

// runTarget drives running servers over HTTP. With -serve-upstream in the
// same process, the report has the upstream's figures too.
func runTarget(ctx context.Context, o options, up *upstream) (*Report, []timelineRow, error) {
	cat := newCatalog(o.Courses, o.Videos, o.ZipfS)
	names, err := serverCatalog(ctx, o.Targets[0])
	if err != nil {
		return nil, nil, err
	}
	if len(names) > 0 {
		maxV := 0
		for _, c := range names {
			maxV = max(maxV, len(c))
		}
		cat = newCatalog(len(names), maxV, o.ZipfS)
		cat.names = names
	}
	d := newHTTPDriver(o.Targets, o.AuthSecret, o.LearnerTimeout)
	fmt.Fprintf(o.Out, "target: %d learners x %g/min against %s, %s\n", o.Learners, o.PerMinute, strings.Join(o.Targets, ", "), o.Duration)
	rep, rows := runOpen(ctx, o, cat, d, up)
	rep.Mode = "target"
	rep.Answers = nil // the servers' cache is theirs: no figures of it here
	if up != nil {
		fillUpstream(rep, up, o, rep.Started)
	}
	rep.Settings = settings(o)
	rep.Checks = openChecks(rep, o, false)
	return rep, rows, nil
}
