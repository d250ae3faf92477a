package app

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/chatscale/chatscale/contextcache"
)

// Video is one entry of the catalog the chat page offers.
type Video struct {
	CourseID    string `json:"course_id"`
	CourseTitle string `json:"course_title"`
	VideoURL    string `json:"video_url"`
	Title       string `json:"title"`
}

// sample is a built-in transcript: lines of timed speech.
type sample struct {
	Video
	lines []string // one per 20 s of video
}

// samples are the transcripts served when no MongoDB is configured.
var samples = []sample{
	{Video{"demo-course", "Go in practice", "intro", "Welcome: what this course covers"}, []string{
		"Welcome to Go in practice. In this course we build a small web service step by step.",
		"Go is a compiled language with garbage collection, a small syntax and a fast compiler.",
		"Goroutines are functions that run concurrently with other functions; they are cheap, so a server can run thousands of them.",
		"Channels connect goroutines: one goroutine sends a value and another receives it, which also synchronises them.",
		"We will also use the standard library's net/http package, which serves each request in its own goroutine.",
		"By the end of the course you will have written, tested and deployed a service that answers JSON requests.",
	}},
	{Video{"demo-course", "Go in practice", "errors", "Errors are values"}, []string{
		"In Go an error is an ordinary value that a function returns next to its result.",
		"The caller checks it right away with if err != nil and decides what to do.",
		"Wrap an error with fmt.Errorf and the %w verb to add context while keeping the original.",
		"errors.Is tells whether an error chain holds a given sentinel error, and errors.As extracts a typed error from the chain.",
		"Panics are for programming mistakes, not for failures a caller should handle.",
	}},
	{Video{"demo-course", "Go in practice", "testing", "Testing with go test"}, []string{
		"Tests live in files ending in _test.go, next to the code they test.",
		"A test is a function named TestSomething that takes a *testing.T and reports failures with t.Error or t.Fatal.",
		"Table-driven tests loop over a slice of cases, so adding a case is one line.",
		"Run go test -race to let the race detector find data races between goroutines.",
		"The httptest package starts a server on the loopback interface, which makes HTTP handlers easy to test.",
	}},
	{Video{"physics-101", "Physics 101", "newton", "Newton's three laws"}, []string{
		"Newton's first law says that a body stays at rest or keeps moving in a straight line unless a force acts on it.",
		"The second law says that force equals mass times acceleration, F = m a.",
		"So the same force accelerates a light object more than a heavy one.",
		"The third law says that every action has an equal and opposite reaction.",
		"When you push against a wall, the wall pushes back on you with the same force.",
	}},
}

// Catalog returns the built-in sample videos.
func Catalog() []Video {
	out := make([]Video, len(samples))
	for i, s := range samples {
		out[i] = s.Video
	}
	return out
}

// sampleSource is the contextcache.Source of the built-in transcripts.
func sampleSource() contextcache.Source {
	docs := make(map[[2]string]contextcache.Document, len(samples))
	for _, s := range samples {
		const step = 20 * time.Second
		doc := contextcache.Document{CourseID: s.CourseID, VideoURL: s.VideoURL, Title: s.Title,
			Text: strings.Join(s.lines, " ")}
		for i, l := range s.lines {
			doc.Segments = append(doc.Segments, contextcache.Segment{
				Start: time.Duration(i) * step, End: time.Duration(i+1) * step, Text: l,
			})
		}
		docs[[2]string{s.CourseID, s.VideoURL}] = doc
	}
	return contextcache.SourceFunc(func(_ context.Context, courseID, videoURL string) (contextcache.Document, error) {
		d, ok := docs[[2]string{courseID, videoURL}]
		if !ok {
			return contextcache.Document{}, fmt.Errorf("no sample transcript for this video: %w", contextcache.ErrNotFound)
		}
		return d, nil
	})
}
