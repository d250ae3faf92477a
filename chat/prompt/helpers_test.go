package prompt_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatscale/chatscale/chat/prompt"
	"github.com/chatscale/chatscale/contextcache"
)

// o200k returns the o200k_base tokenizer.
func o200k(t testing.TB) prompt.Tokenizer {
	t.Helper()
	tok, err := prompt.ForEncoding(prompt.O200kBase)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// cl100k returns the cl100k_base tokenizer.
func cl100k(t testing.TB) prompt.Tokenizer {
	t.Helper()
	tok, err := prompt.ForEncoding(prompt.Cl100kBase)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// samples returns testdata/sample/*.txt by file name.
func samples(t testing.TB) map[string]string {
	t.Helper()
	files, err := filepath.Glob("testdata/sample/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples: %v", err)
	}
	m := make(map[string]string, len(files))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m[filepath.Base(f)] = string(b)
	}
	return m
}

// counting counts the calls to a Tokenizer.
type counting struct {
	tok   prompt.Tokenizer
	calls atomic.Int64
}

func (c *counting) Count(text string) int {
	c.calls.Add(1)
	return c.tok.Count(text)
}

// sentences are the lines a synthetic transcript is made of.
var sentences = []string{
	"Welcome back to the course.",
	"In this lecture we look at how photosynthesis turns light into chemical energy.",
	"Let's recall the structure of the chloroplast: thylakoids are stacked into grana.",
	"The fluid around them is called the stroma, where the Calvin cycle runs.",
	"Photons excite electrons in chlorophyll, which pass along a transport chain.",
	"As they move, protons are pumped across the membrane, building a gradient.",
	"ATP synthase uses that gradient to make ATP from ADP and phosphate.",
	"NADPH carries the electrons on to the Calvin cycle.",
	"Rubisco fixes carbon dioxide onto ribulose bisphosphate.",
	"Three turns of the cycle make one molecule of glyceraldehyde 3-phosphate.",
	"Now, a quick question for you: why does the cycle stop in the dark?",
	"Think about where the ATP and the NADPH come from.",
}

// lecture returns a timed transcript of n segments, one every step, each a
// numbered sentence.
func lecture(n int, step time.Duration) contextcache.Document {
	doc := contextcache.Document{
		CourseID:  "bio-101",
		VideoURL:  "https://videos.example/photosynthesis",
		Title:     "Photosynthesis",
		UpdatedAt: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC),
	}
	var text strings.Builder
	for i := range n {
		s := fmt.Sprintf("(%d) %s", i, sentences[i%len(sentences)])
		start := time.Duration(i) * step
		doc.Segments = append(doc.Segments, contextcache.Segment{Start: start, End: start + step - time.Second, Text: s})
		if i > 0 {
			text.WriteByte(' ')
		}
		text.WriteString(s)
	}
	doc.Text = text.String()
	return doc
}
