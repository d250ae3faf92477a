package chat

import (
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale/chat/prompt"
)

// Token accounting of the message framing, as OpenAI counts it: each
// message costs a few tokens besides its content, and the reply is primed
// with a few more.
const (
	perMessageTokens = 4
	replyPriming     = 3
	// noteReserve is what plan sets aside for the notes build adds after
	// the history (video switch, position), before they are known.
	noteReserve = 96
	// budgetStep is the granularity of a transcript budget cut short by
	// the context window.
	budgetStep = 256
)

// built is a turn's prompt.
type built struct {
	system   systemText
	avail    int // tokens for transcript, history and notes
	excerpt  prompt.Excerpt
	history  int // messages of the thread sent
	notes    [2]string
	messages []openai.ChatCompletionMessage
	tokens   int // the Service's count of the whole prompt
}

// systemText is a rendered system prompt and its token count.
type systemText struct {
	text   string
	tokens int
}

// plan renders the system prompt and checks that the fixed part of the
// prompt (system prompt, question, reply, framing) fits the context
// window.
func (t *turn) plan() error {
	s := t.s
	sys, err := s.system(t)
	if err != nil {
		return err
	}
	t.built.system = sys
	fixed := sys.tokens + t.msgTokens + 5*perMessageTokens + replyPriming + noteReserve
	avail := s.cfg.ContextWindow - s.cfg.MaxReplyTokens - fixed
	if avail < 0 {
		return invalidField("Message", "with the system prompt and the reply's maximum it needs "+
			strconv.Itoa(fixed+s.cfg.MaxReplyTokens)+" tokens, over the context window of "+strconv.Itoa(s.cfg.ContextWindow))
	}
	t.built.avail = avail
	return nil
}

// build assembles the messages: system prompt, transcript excerpt,
// history, notes, question.
func (t *turn) build() {
	s := t.s
	b := &t.built
	left := b.avail
	if t.haveDoc && s.cfg.TranscriptTokens > 0 {
		budget := s.cfg.TranscriptTokens
		if room := left - perMessageTokens; room < budget {
			// The room left depends on the question's length: rounded
			// down, it gives the same excerpt (and prompt prefix) to
			// questions of similar lengths.
			budget = room - room%budgetStep
		}
		if budget > 0 {
			tr := s.scripts.Get(t.doc)
			b.excerpt = tr.Window(t.req.Position, t.req.HasPosition, budget)
			if b.excerpt.Text != "" {
				left -= b.excerpt.Tokens + perMessageTokens
			}
			t.resp.TranscriptCut = b.excerpt.Cut
		} else {
			t.resp.TranscriptCut = true
		}
	}
	hist := t.session.History
	first := len(hist) // first history message sent
	if s.cfg.HistoryTokens > 0 {
		budget := min(s.cfg.HistoryTokens, left)
		for first > 0 {
			n := s.tok.Count(hist[first-1].Content) + perMessageTokens
			if n > budget {
				break
			}
			budget -= n
			left -= n
			first--
		}
	}
	b.history = len(hist) - first
	t.resp.HistoryMessages = b.history

	notes := b.notes[:0]
	if t.session.VideoSwitched {
		notes = append(notes, s.switchNote(t))
	}
	if t.req.HasPosition && !s.usesPos {
		notes = append(notes, "The learner is at "+clock(t.req.Position)+" in the video.")
	}

	n := 1 + b.history + len(notes) + 1
	if b.excerpt.Text != "" {
		n++
	}
	msgs := make([]openai.ChatCompletionMessage, 0, n)
	msgs = append(msgs, openai.ChatCompletionMessage{Role: openai.ChatMessageRoleSystem, Content: b.system.text})
	tokens := b.system.tokens + perMessageTokens + replyPriming
	if b.excerpt.Text != "" {
		msgs = append(msgs, openai.ChatCompletionMessage{Role: openai.ChatMessageRoleSystem, Content: b.excerpt.Text})
		tokens += b.excerpt.Tokens + perMessageTokens
	}
	for _, m := range hist[first:] {
		msgs = append(msgs, openai.ChatCompletionMessage{Role: string(m.Role), Content: m.Content})
		tokens += s.tok.Count(m.Content) + perMessageTokens
	}
	for _, note := range notes {
		msgs = append(msgs, openai.ChatCompletionMessage{Role: openai.ChatMessageRoleSystem, Content: note})
		tokens += s.tok.Count(note) + perMessageTokens
	}
	msgs = append(msgs, openai.ChatCompletionMessage{Role: openai.ChatMessageRoleUser, Content: t.req.Message})
	tokens += t.msgTokens + perMessageTokens
	b.messages = msgs
	b.tokens = tokens
	t.resp.PromptTokens = tokens
}

// request is the upstream request of the turn.
func (t *turn) request() openai.ChatCompletionRequest {
	return openai.ChatCompletionRequest{
		Model:               t.s.cfg.Model,
		Messages:            t.built.messages,
		MaxCompletionTokens: t.s.cfg.MaxReplyTokens,
	}
}

// switchNote tells the model that the learner changed videos.
func (s *Service) switchNote(t *turn) string {
	to := t.req.VideoURL
	if t.doc.Title != "" {
		to = strconv.Quote(t.doc.Title) + " (" + to + ")"
	}
	return "The learner has moved on from the video " + t.session.PreviousVideo + " to " + to +
		"; earlier messages may be about the previous video."
}

// clock formats d as m:ss or h:mm:ss.
func clock(d time.Duration) string {
	sec := int64(d / time.Second)
	h, m, ss := sec/3600, sec/60%60, sec%60
	var b strings.Builder
	if h > 0 {
		b.WriteString(strconv.FormatInt(h, 10))
		b.WriteByte(':')
		if m < 10 {
			b.WriteByte('0')
		}
	}
	b.WriteString(strconv.FormatInt(m, 10))
	b.WriteByte(':')
	if ss < 10 {
		b.WriteByte('0')
	}
	b.WriteString(strconv.FormatInt(ss, 10))
	return b.String()
}

// system returns the rendered system prompt of the turn, from the cache
// unless the template uses the position.
func (s *Service) system(t *turn) (systemText, error) {
	d := PromptData{CourseID: t.req.CourseID, VideoURL: t.req.VideoURL, Title: t.doc.Title}
	if s.usesPos {
		d.Position, d.HasPosition = t.req.Position, t.req.HasPosition
		return s.render(d)
	}
	if st, ok := s.systems.get(d); ok {
		return st, nil
	}
	st, err := s.render(d)
	if err == nil {
		s.systems.put(d, st)
	}
	return st, err
}

func (s *Service) render(d PromptData) (systemText, error) {
	var b strings.Builder
	if err := s.tpl.Execute(&b, d); err != nil {
		return systemText{}, err
	}
	text := b.String()
	return systemText{text: text, tokens: s.tok.Count(text)}, nil
}

// systemCache keeps rendered system prompts by (course, video, title),
// up to systemCacheSize entries; when full it starts over.
type systemCache struct {
	mu sync.RWMutex
	m  map[PromptData]systemText
}

const systemCacheSize = 4096

func (c *systemCache) get(d PromptData) (systemText, bool) {
	c.mu.RLock()
	st, ok := c.m[d]
	c.mu.RUnlock()
	return st, ok
}

func (c *systemCache) put(d PromptData, st systemText) {
	c.mu.Lock()
	if c.m == nil || len(c.m) >= systemCacheSize {
		c.m = make(map[PromptData]systemText)
	}
	c.m[d] = st
	c.mu.Unlock()
}
