package threads_test

import (
	"context"
	"fmt"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/threads"
)

func ExampleNewMemory() {
	ctx := context.Background()
	st, err := threads.NewMemory(threads.Config{MaxMessages: 2})
	if err != nil {
		panic(err)
	}
	defer st.Close()

	sess, _ := st.Open(ctx, threads.OpenRequest{UserID: "learner-1", CourseID: "go-101", VideoURL: "intro.mp4"})
	fmt.Println("created:", sess.Created)
	_ = st.Append(ctx, sess.Thread.ID,
		threads.Message{Role: threads.RoleUser, Content: "What is a goroutine?"},
		threads.Message{Role: threads.RoleAssistant, Content: "A lightweight thread."},
		threads.Message{Role: threads.RoleUser, Content: "And a channel?"},
	)
	sess, _ = st.Open(ctx, threads.OpenRequest{UserID: "learner-1", CourseID: "go-101", VideoURL: "channels.mp4"})
	fmt.Println("switched from", sess.PreviousVideo, "to", sess.Thread.VideoURL)
	for _, m := range sess.History {
		fmt.Printf("%s: %s\n", m.Role, m.Content)
	}
	// Output:
	// created: true
	// switched from intro.mp4 to channels.mp4
	// assistant: A lightweight thread.
	// user: And a channel?
}

func ExampleNewRedis() {
	ctx := context.Background()
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close() // NewRedis does not take ownership of rdb

	st, err := threads.NewRedis(rdb, threads.Config{})
	if err != nil {
		panic(err)
	}
	// Optional, at startup: the first turns then need no EVAL fallback.
	if err := st.LoadScripts(ctx); err != nil {
		panic(err)
	}
	// One round trip: get or create the thread, record the video, read history.
	sess, _ := st.Open(ctx, threads.OpenRequest{UserID: "learner-1", CourseID: "go-101", VideoURL: "intro.mp4", HistoryLimit: 20})
	// One round trip: append the turn, trim, slide the TTL.
	_ = st.Append(ctx, sess.Thread.ID,
		threads.Message{Role: threads.RoleUser, Content: "What is a goroutine?"},
		threads.Message{Role: threads.RoleAssistant, Content: "A lightweight thread."},
	)
	h, _ := st.History(ctx, sess.Thread.ID, 0)
	fmt.Println(len(h), "messages; last:", h[len(h)-1].Content)
	n, _ := st.ForgetUser(ctx, "learner-1")
	fmt.Println("forgot", n, "thread")
	// Output:
	// 2 messages; last: A lightweight thread.
	// forgot 1 thread
}
