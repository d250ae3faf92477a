package app

import (
	"strings"
	"testing"

	"github.com/sashabaranov/go-openai"
)

func TestOfflineReply(t *testing.T) {
	t.Parallel()
	sys := `You are a patient tutor for the course c. The learner is watching the video "Errors are values".`
	transcript := "[Transcript excerpt, 0:00–1:40 of the video]\n[0:00] In Go an error is an ordinary value. [0:20] The caller checks it right away.\n[0:40] Wrap an error with fmt.Errorf and the %w verb."
	msgs := func(q string) []openai.ChatCompletionMessage {
		return []openai.ChatCompletionMessage{
			{Role: "system", Content: sys}, {Role: "system", Content: transcript},
			{Role: "user", Content: "earlier"}, {Role: "assistant", Content: "answer"},
			{Role: "system", Content: "The learner is at 0:30 in the video."}, {Role: "user", Content: q},
		}
	}
	for q, want := range map[string]string{
		"How do I wrap an error?": `From "Errors are values": In Go an error is an ordinary value. Wrap an error with fmt.Errorf and the %w verb.`,
		"Who checks it?":          `From "Errors are values": The caller checks it right away.`,
		"Tell me about monads":    `The transcript of "Errors are values" does not cover that directly. It begins: In Go an error is an ordinary value.`,
	} {
		words := offlineReply(msgs(q))
		if got := strings.Join(words, ""); got != want {
			t.Errorf("reply to %q = %q, want %q", q, got, want)
		}
		if again := strings.Join(offlineReply(msgs(q)), ""); again != want {
			t.Errorf("second reply to %q differs: %q", q, again)
		}
	}
	if got := strings.Join(offlineReply([]openai.ChatCompletionMessage{{Role: "system", Content: sys}, {Role: "user", Content: "hi"}}), ""); !strings.HasPrefix(got, "I have no transcript") {
		t.Errorf("reply without transcript = %q", got)
	}
}
