package prompt_test

import (
	"errors"
	"strings"
	"sync"
	"testing"

	tiktoken "github.com/pkoukk/tiktoken-go"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/chat/prompt"
)

// oracle returns tiktoken-go's own encoder for enc, to check counts
// against, loaded from the vocabularies embedded by tiktoken-go-loader.
func oracle(t testing.TB, enc string) *tiktoken.Tiktoken {
	t.Helper()
	return prompt.Oracle(t, enc)
}

func TestKnownTokenCounts(t *testing.T) {
	// Token IDs as tiktoken (Python and Go) encodes these strings.
	cases := []struct {
		enc, text string
		ids       []int
	}{
		{prompt.O200kBase, "hello world", []int{24912, 2375}},
		{prompt.O200kBase, "Hello, world!", []int{13225, 11, 2375, 0}},
		{prompt.O200kBase, "What is the Calvin cycle?", []int{4827, 382, 290, 86481, 15839, 30}},
		{prompt.O200kBase, "光合作用", []int{20244, 49379, 5615}},
		{prompt.O200kBase, "Привет, мир", []int{23881, 131903, 11, 37934}},
		{prompt.O200kBase, "<|endoftext|>", []int{27, 91, 419, 1440, 919, 91, 29}},
		{prompt.Cl100kBase, "hello world", []int{15339, 1917}},
		{prompt.Cl100kBase, "Hello, world!", []int{9906, 11, 1917, 0}},
		{prompt.Cl100kBase, "What is the Calvin cycle?", []int{3923, 374, 279, 51983, 11008, 30}},
		{prompt.Cl100kBase, "光合作用", []int{6708, 231, 40862, 19967, 11883}},
		{prompt.Cl100kBase, "Привет, мир", []int{54745, 28089, 8341, 11, 11562, 78746}},
		{prompt.Cl100kBase, "<|endoftext|>", []int{27, 91, 8862, 728, 428, 91, 29}},
	}
	for _, c := range cases {
		tok, err := prompt.ForEncoding(c.enc)
		if err != nil {
			t.Fatal(err)
		}
		if got := oracle(t, c.enc).EncodeOrdinary(c.text); !equalInts(got, c.ids) {
			t.Errorf("%s: tiktoken encodes %q as %v, want %v", c.enc, c.text, got, c.ids)
		}
		if got := tok.Count(c.text); got != len(c.ids) {
			t.Errorf("%s: Count(%q) = %d, want %d", c.enc, c.text, got, len(c.ids))
		}
	}
	for _, enc := range []string{prompt.O200kBase, prompt.Cl100kBase} {
		tok, _ := prompt.ForEncoding(enc)
		if n := tok.Count(""); n != 0 {
			t.Errorf("%s: Count(\"\") = %d", enc, n)
		}
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Long texts, with long pieces (Chinese and Thai have no spaces between
// words), count as tiktoken-go counts them whole.
func TestCountOfLongTextsMatchesTiktoken(t *testing.T) {
	var all strings.Builder
	for _, s := range samples(t) {
		all.WriteString(s)
	}
	texts := []string{
		all.String(),
		strings.Repeat(samples(t)["zh.txt"], 8), // no ASCII spaces at all
		strings.Repeat(samples(t)["th.txt"], 4), // long runs of letters
		strings.Repeat(samples(t)["code.txt"], 6),
		strings.Repeat(samples(t)["math.txt"], 6),
	}
	for _, enc := range []string{prompt.O200kBase, prompt.Cl100kBase} {
		tok, _ := prompt.ForEncoding(enc)
		or := oracle(t, enc)
		for i, text := range texts {
			if len(text) < 2048 {
				t.Fatalf("text %d is too short to be cut: %d bytes", i, len(text))
			}
			if got, want := tok.Count(text), len(or.EncodeOrdinary(text)); got != want {
				t.Errorf("%s: text %d (%d bytes): Count = %d, tiktoken = %d", enc, i, len(text), got, want)
			}
		}
	}
}

func TestCountOfPathologicalTextIsBounded(t *testing.T) {
	tok := o200k(t)
	// A 64 KiB "word" would take tiktoken's quadratic merge minutes.
	n := tok.Count(strings.Repeat("a", 64<<10))
	if n <= 0 || n > 64<<10 {
		t.Fatalf("Count = %d", n)
	}
}

func TestEncodingForModel(t *testing.T) {
	cases := map[string]string{
		"gpt-4o":                              prompt.O200kBase,
		"gpt-4o-mini":                         prompt.O200kBase,
		"gpt-4o-2024-08-06":                   prompt.O200kBase,
		"chatgpt-4o-latest":                   prompt.O200kBase,
		"gpt-4.1":                             prompt.O200kBase,
		"gpt-4.1-nano":                        prompt.O200kBase,
		"gpt-4.5-preview":                     prompt.O200kBase,
		"gpt-5":                               prompt.O200kBase,
		"gpt-5-mini":                          prompt.O200kBase,
		"gpt-5.1":                             prompt.O200kBase,
		"o1":                                  prompt.O200kBase,
		"o1-mini":                             prompt.O200kBase,
		"o3-mini":                             prompt.O200kBase,
		"o4-mini":                             prompt.O200kBase,
		"gpt-oss-120b":                        prompt.O200kBase,
		"GPT-4o":                              prompt.O200kBase,
		"openai/gpt-4o-mini":                  prompt.O200kBase,
		"deployments/my-team/gpt-4.1":         prompt.O200kBase,
		"ft:gpt-4o-mini-2024-07-18:acme::x1y": prompt.O200kBase,
		"gpt-4":                               prompt.Cl100kBase,
		"gpt-4-turbo":                         prompt.Cl100kBase,
		"gpt-4-32k":                           prompt.Cl100kBase,
		"gpt-3.5-turbo":                       prompt.Cl100kBase,
		"gpt-3.5-turbo-0125":                  prompt.Cl100kBase,
		"gpt-35-turbo":                        prompt.Cl100kBase,
		"text-embedding-3-small":              prompt.Cl100kBase,
		"text-embedding-3-large":              prompt.Cl100kBase,
		"text-embedding-ada-002":              prompt.Cl100kBase,
		"text-davinci-003":                    prompt.P50kBase,
		"davinci":                             prompt.R50kBase,
		"text-davinci-edit-001":               prompt.P50kEdit,
		"":                                    "",
		"llama-3.1-70b":                       "",
		"claude-sonnet-4":                     "",
		"gpt2":                                "", // tiktoken-go names an encoding it cannot load
		"my-gpt-4o-deployment":                "",
	}
	for model, want := range cases {
		if got := prompt.EncodingForModel(model); got != want {
			t.Errorf("EncodingForModel(%q) = %q, want %q", model, got, want)
		}
	}
}

func TestForModel(t *testing.T) {
	o, c := o200k(t), cl100k(t)
	zh := samples(t)["zh.txt"]
	if o.Count(zh) == c.Count(zh) {
		t.Fatal("the sample does not tell o200k_base from cl100k_base")
	}
	for model, want := range map[string]prompt.Tokenizer{
		"gpt-4o-mini": o, "o3": o, "gpt-5": o, "azure/gpt-4.1": o,
		"gpt-4-turbo": c, "gpt-3.5-turbo": c,
	} {
		tok, err := prompt.ForModel(model)
		if err != nil {
			t.Fatalf("ForModel(%q): %v", model, err)
		}
		if tok != want { // one shared tokenizer per encoding
			t.Errorf("ForModel(%q) is not the shared tokenizer of its encoding", model)
		}
		if got := tok.Count(zh); got != want.Count(zh) {
			t.Errorf("ForModel(%q).Count = %d, want %d", model, got, want.Count(zh))
		}
	}
	for _, model := range []string{"", "llama-3.1-70b", "mistral-large", "claude-sonnet-4"} {
		tok, err := prompt.ForModel(model)
		if err != nil || tok != (prompt.Estimate{}) {
			t.Errorf("ForModel(%q) = %#v, %v; want Estimate{}, nil", model, tok, err)
		}
	}
	tok, err := prompt.ForEncoding("p99k_base")
	var ie *chatscale.InputError
	if !errors.Is(err, chatscale.ErrInvalidInput) || !errors.As(err, &ie) || ie.Field != "name" || tok != (prompt.Estimate{}) {
		t.Errorf("ForEncoding(unknown) = %#v, %v; want Estimate{} and a *chatscale.InputError for name", tok, err)
	}
}

func TestForModelConcurrentFirstUse(t *testing.T) {
	// r50k_base is loaded by no other test: the goroutines race to load it.
	var wg sync.WaitGroup
	toks := make([]prompt.Tokenizer, 8)
	for i := range toks {
		wg.Go(func() {
			tok, err := prompt.ForModel("davinci")
			if err != nil {
				t.Error(err)
			}
			toks[i] = tok
		})
	}
	wg.Wait()
	for _, tok := range toks[1:] {
		if tok != toks[0] {
			t.Fatal("concurrent first uses got different tokenizers")
		}
	}
	if n := toks[0].Count("hello world"); n != 2 {
		t.Fatalf("r50k_base Count(hello world) = %d, want 2", n)
	}
}

func TestCountConcurrentUse(t *testing.T) {
	tok := o200k(t)
	texts := samples(t)
	want := map[string]int{}
	for name, s := range texts {
		want[name] = tok.Count(s)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for name, s := range texts {
				if got := tok.Count(s); got != want[name] {
					t.Errorf("%s: concurrent Count %d, serial %d", name, got, want[name])
				}
			}
		})
	}
	wg.Wait()
}
