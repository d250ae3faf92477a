package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatscale/chatscale/contextcache"
)

// arrivals returns the times of a Poisson process of perMinute events a
// minute over [0, dur), in order: exponential gaps drawn from r.
func arrivals(r *rand.Rand, perMinute float64, dur time.Duration) []time.Duration {
	if perMinute <= 0 {
		return nil
	}
	mean := float64(time.Minute) / perMinute
	var out []time.Duration
	t := 0.0
	for {
		t += r.ExpFloat64() * mean
		if t >= float64(dur) {
			return out
		}
		out = append(out, time.Duration(t))
	}
}

// zipf draws ranks 0..n-1 with P(k) proportional to 1/(k+1)^s.
type zipf struct {
	cdf []float64
}

func newZipf(n int, s float64) *zipf {
	z := &zipf{cdf: make([]float64, n)}
	sum := 0.0
	for k := range n {
		sum += math.Pow(float64(k+1), -s)
		z.cdf[k] = sum
	}
	for k := range z.cdf {
		z.cdf[k] /= sum
	}
	return z
}

// p returns the probability of rank k.
func (z *zipf) p(k int) float64 {
	if k == 0 {
		return z.cdf[0]
	}
	return z.cdf[k] - z.cdf[k-1]
}

// draw returns a rank.
func (z *zipf) draw(r *rand.Rand) int {
	u := r.Float64()
	lo, hi := 0, len(z.cdf)-1
	for lo < hi {
		m := (lo + hi) / 2
		if z.cdf[m] < u {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// catalog names the courses and videos of the scenario.
type catalog struct {
	courses, videos int
	course, video   *zipf
	// names, when set (the -target mode, from the server's /v1/config),
	// replaces the generated IDs: names[c][v] = {courseID, videoURL}.
	names [][][2]string
}

func newCatalog(courses, videos int, s float64) *catalog {
	return &catalog{courses: courses, videos: videos, course: newZipf(courses, s), video: newZipf(videos, s)}
}

func (c *catalog) courseID(k int) string {
	if c.names != nil {
		return c.names[k][0][0]
	}
	return fmt.Sprintf("course-%02d", k)
}

func (c *catalog) videoURL(k, v int) string {
	if c.names != nil {
		return c.names[k][v%len(c.names[k])][1]
	}
	return fmt.Sprintf("https://videos.example/course-%02d/%03d", k, v)
}

// learner is one simulated learner: the course it follows, the video it
// watches and where, its own random stream.
type learner struct {
	id     string
	r      *rand.Rand
	course int
	video  int
	pos    time.Duration
	asked  int
}

// videoLength is the length of every generated video.
const videoLength = 10 * time.Minute

func newLearner(id string, seed uint64, cat *catalog) *learner {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	l := &learner{id: id, r: r, course: cat.course.draw(r)}
	l.video = cat.video.draw(r)
	l.pos = time.Duration(r.Int64N(int64(videoLength)))
	return l
}

// switchProb is the chance that a learner moves to another video before a
// question: half the time the next one in the course, half a popular one.
const switchProb = 0.1

// question is one turn a learner asks.
type question struct {
	course, video, message string
	pos                    time.Duration
	hasPos                 bool
	// first is the learner's first turn on its course (its thread holds
	// no message yet); common that it asks one of the commonQuestions.
	first, common bool
}

// next moves the learner along and returns its next question. common is
// the share of first turns that ask one of the commonQuestions (see
// commonQuestion); the draw is made only when common > 0, so that a run
// without the mix asks what it always asked.
func (l *learner) next(cat *catalog, common float64) question {
	if l.asked > 0 && l.r.Float64() < switchProb {
		if l.r.IntN(2) == 0 {
			l.video = (l.video + 1) % cat.videos
		} else {
			l.video = cat.video.draw(l.r)
		}
		l.pos = 0
	}
	l.pos += time.Duration(10+l.r.IntN(50)) * time.Second
	if l.pos >= videoLength {
		l.pos = videoLength - time.Second
	}
	l.asked++
	topic := topics[l.r.IntN(len(topics))]
	q := question{course: cat.courseID(l.course), video: cat.videoURL(l.course, l.video), pos: l.pos, hasPos: true, first: l.asked == 1}
	if q.first && common > 0 && l.r.Float64() < common {
		// An opening question is about the whole video: it carries no
		// playback position (a position would enter the answer cache's
		// key and part learners who ask the same thing).
		q.message, q.common, q.hasPos, q.pos = commonQuestion(l.r), true, false, 0
		return q
	}
	q.message = "Question " + strconv.Itoa(l.asked) + " from " + l.id + ": " + topic
	return q
}

// commonQuestions are the opening questions many learners ask about a
// video, in their plain wording.
var commonQuestions = []string{
	"What is this video about?",
	"Summarise this video",
	"What are the key points?",
	"Can you explain this simply?",
	"What should I learn first?",
}

// commonQuestion draws one of the commonQuestions, uniformly, in one of
// the ways learners type it: its casing, spacing and trailing punctuation
// vary, never its words, so that every variant is one question after the
// answer cache's normalisation.
func commonQuestion(r *rand.Rand) string {
	q := strings.TrimRight(commonQuestions[r.IntN(len(commonQuestions))], "?")
	switch r.IntN(4) {
	case 1:
		q = strings.ToLower(q)
	case 2:
		q = strings.ToUpper(q)
	case 3:
		q = strings.ToLower(q[:1]) + q[1:]
	}
	switch r.IntN(3) {
	case 1:
		q = strings.ReplaceAll(q, " ", "  ")
	case 2:
		q = "  " + strings.Replace(q, " ", " \t", 1) + " "
	}
	return q + [...]string{"?", "", "??", " ?", ".", "?!"}[r.IntN(6)]
}

var topics = []string{
	"why does the speaker close the channel only on the sending side?",
	"what happens to a goroutine blocked on a nil channel?",
	"how is a buffered channel different from a mutex here?",
	"can you explain the select statement in the last example again?",
	"why is the WaitGroup passed by pointer?",
	"what does the race detector report in this case?",
	"when should I use context cancellation instead of a done channel?",
	"how many goroutines can a program run at once?",
}

// source is the transcript store shared by every instance: generated
// transcripts, a simulated latency per load, and a count of loads.
type source struct {
	latency time.Duration
	mu      sync.Mutex
	loads   []time.Time
	keys    map[string]int // loads per video
	repeats int            // loads of a video loaded before
	n       atomic.Int64
}

// segments of a generated transcript: 40 segments of 15 s (10 minutes),
// about 160 bytes each, about 6.4 KB in all (about 1,500 tokens).
const (
	segments   = 40
	segmentLen = 15 * time.Second
)

func (s *source) Load(ctx context.Context, courseID, videoURL string) (contextcache.Document, error) {
	if s.latency > 0 {
		t := time.NewTimer(s.latency)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return contextcache.Document{}, ctx.Err()
		}
	}
	s.n.Add(1)
	s.mu.Lock()
	s.loads = append(s.loads, time.Now())
	if s.keys == nil {
		s.keys = map[string]int{}
	}
	k := courseID + "\x00" + videoURL
	if s.keys[k] > 0 {
		s.repeats++
	}
	s.keys[k]++
	s.mu.Unlock()
	return transcript(courseID, videoURL), nil
}

// distinct returns how many videos were loaded, and how many loads were
// of a video loaded before.
func (s *source) distinct() (videos, repeats int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.keys), s.repeats
}

// loadsSince counts the loads at or after t.
func (s *source) loadsSince(t time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.loads {
		if !l.Before(t) {
			n++
		}
	}
	return n
}

func transcript(courseID, videoURL string) contextcache.Document {
	d := contextcache.Document{CourseID: courseID, VideoURL: videoURL, Title: "Lecture " + videoURL[strings.LastIndexByte(videoURL, '/')+1:]}
	var text strings.Builder
	for i := range segments {
		seg := contextcache.Segment{
			Start: time.Duration(i) * segmentLen, End: time.Duration(i+1) * segmentLen,
			Text: fmt.Sprintf("[%s %02d] ", videoURL, i) + strings.Repeat("goroutines communicate over channels; ", 4),
		}
		d.Segments = append(d.Segments, seg)
		text.WriteString(seg.Text)
	}
	d.Text = text.String()
	return d
}
