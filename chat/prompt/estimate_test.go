package prompt_test

import (
	"go/build"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/chatscale/chatscale/chat/prompt"
)

// Estimate over-counts o200k_base on every sample text (English, 24 other
// languages, arithmetic, code, emoji) and on every sentence of them.
func TestEstimateOverCountsSamples(t *testing.T) {
	tok := o200k(t)
	var e prompt.Estimate
	sentences := 0
	all := samples(t)
	names := slices.Sorted(maps.Keys(all))
	for _, name := range names {
		text := all[name]
		est, real := e.Count(text), tok.Count(text)
		if est < real {
			t.Errorf("%s: Estimate %d < o200k %d", name, est, real)
		}
		t.Logf("%-10s o200k %4d  Estimate %4d  ratio %.2f", name, real, est, float64(est)/float64(real))
		for _, s := range strings.FieldsFunc(text, func(r rune) bool { return strings.ContainsRune("\n.?。？", r) }) {
			sentences++
			if est, real := e.Count(s), tok.Count(s); est < real {
				t.Errorf("%s: Estimate %d < o200k %d on %q", name, est, real, s)
			}
		}
	}
	t.Logf("%d texts, %d sentences", len(names), sentences)
	if sentences < 100 {
		t.Fatalf("only %d sentences", sentences)
	}
}

// Estimate over-counts o200k_base on nearly every paragraph of English
// documentation: Go's doc comments.
func TestEstimateOverCountsGoDocs(t *testing.T) {
	if testing.Short() {
		t.Skip("reads GOROOT")
	}
	root := filepath.Join(build.Default.GOROOT, "src")
	var paragraphs []string
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.Contains(path, "testdata") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		for _, block := range strings.Split(string(b), "\n\n") {
			var p strings.Builder
			for _, l := range strings.Split(block, "\n") {
				l = strings.TrimSpace(l)
				if !strings.HasPrefix(l, "// ") {
					p.Reset()
					break
				}
				p.WriteString(l[3:])
				p.WriteByte(' ')
			}
			if p.Len() >= 40 {
				paragraphs = append(paragraphs, p.String())
			}
		}
		if len(paragraphs) >= 1500 {
			return fs.SkipAll
		}
		return nil
	})
	if len(paragraphs) < 500 {
		t.Skipf("only %d doc paragraphs under %s", len(paragraphs), root)
	}
	tok := o200k(t)
	var ratios []float64
	under := 0
	for _, p := range paragraphs {
		est, real := prompt.Estimate{}.Count(p), tok.Count(p)
		ratios = append(ratios, float64(est)/float64(real))
		if est < real {
			under++
		}
	}
	slices.Sort(ratios)
	t.Logf("%d paragraphs: %d under, ratio min %.2f median %.2f max %.2f",
		len(ratios), under, ratios[0], ratios[len(ratios)/2], ratios[len(ratios)-1])
	if under*100 > len(ratios) || ratios[0] < 0.8 {
		t.Errorf("Estimate under-counts %d of %d paragraphs, down to %.2f", under, len(ratios), ratios[0])
	}
}

func TestEstimateEdgeCases(t *testing.T) {
	var e prompt.Estimate
	for text, want := range map[string]int{
		"":        0,
		"a":       1,
		"hello":   1,
		"123456":  2,
		"1234567": 3,
		" ":       1,
		"\n\n":    1,
		"!":       1,
		"🎉":       3,
	} {
		if got := e.Count(text); got != want {
			t.Errorf("Count(%q) = %d, want %d", text, got, want)
		}
	}
	if n := e.Count("\xff\xfe invalid"); n <= 0 {
		t.Errorf("Count(invalid UTF-8) = %d", n)
	}
}
