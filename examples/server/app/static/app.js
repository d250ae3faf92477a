// The chat page: pick a video, ask, read the reply as it streams in
// (Server-Sent Events from POST /v1/chat/stream), find the history again
// after a reload (GET /v1/history). Plain JavaScript, no dependencies.
'use strict';

const $ = (id) => document.getElementById(id);
const state = { auth: 'anonymous', videos: [] };

// Why a reply was degraded, for the notice.
const reasons = {
  breaker_open: 'the AI service is failing, so a stand-in reply was given',
  retries_exhausted: 'the AI service did not answer, so a stand-in reply was given',
  rate_limited: 'the AI service is at its rate limit, so a stand-in reply was given',
  bulkhead_full: 'the server is busy, so a stand-in reply was given',
  quota_exhausted: 'the AI service quota is spent, so a stand-in reply was given',
  limiter_unavailable: 'the budget store is down, so a stand-in reply was given',
  threads_unavailable: 'your history could not be read or saved',
  transcript_missing: 'this video has no transcript, so the tutor answered without it',
  transcript_unavailable: 'the transcript could not be loaded, so the tutor answered without it',
  transcript_stale: 'an older copy of the transcript was used',
};

function headers(json) {
  const h = {};
  if (json) h['Content-Type'] = 'application/json';
  const t = $('token').value.trim();
  if (state.auth === 'bearer' && t) h['Authorization'] = 'Bearer ' + t;
  return h;
}

// current returns the course and video the learner watches.
function current() {
  const v = $('video').value;
  if (v === 'custom' || v === '') {
    return { course_id: $('course').value.trim(), video_url: $('videourl').value.trim() };
  }
  const x = state.videos[Number(v)];
  return { course_id: x.course_id, video_url: x.video_url };
}

function notice(text, kind) {
  const n = $('notice');
  n.textContent = text || '';
  n.className = kind || '';
  n.hidden = !text;
}

function addMessage(role, text) {
  const li = document.createElement('li');
  li.className = 'msg ' + role;
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = role === 'user' ? 'You' : 'Tutor';
  const body = document.createElement('div');
  body.className = 'text';
  body.textContent = text;
  li.append(who, body);
  $('messages').append(li);
  $('empty').hidden = true;
  li.scrollIntoView({ block: 'end' });
  return li;
}

async function errorText(res) {
  try {
    const e = await res.json();
    let s = e.error || res.statusText;
    if (e.retry_after_seconds) s += ' (retry in ' + e.retry_after_seconds + ' s)';
    return s;
  } catch {
    return res.status + ' ' + res.statusText;
  }
}

function explain(rs) {
  return (rs || []).map((r) => reasons[r] || r).join('; ');
}

async function loadHistory() {
  const { course_id } = current();
  $('messages').replaceChildren();
  document.body.dataset.history = 'loading';
  if (!course_id) {
    document.body.dataset.history = 'none';
    return;
  }
  const res = await fetch('/v1/history?course_id=' + encodeURIComponent(course_id), { headers: headers(false) });
  if (!res.ok) {
    notice(await errorText(res), 'error');
    document.body.dataset.history = 'error';
    return;
  }
  const body = await res.json();
  for (const m of body.messages) {
    if (m.role === 'user' || m.role === 'assistant') addMessage(m.role, m.content);
  }
  $('empty').hidden = body.messages.length > 0;
  document.body.dataset.history = 'loaded';
}

async function ask(ev) {
  ev.preventDefault();
  const q = $('question').value.trim();
  if (!q) return;
  const payload = { ...current(), message: q };
  const pos = $('position').value;
  if (pos !== '') payload.position_seconds = Number(pos);

  notice('');
  addMessage('user', q);
  $('question').value = '';
  const li = addMessage('assistant', '');
  li.classList.add('streaming');
  const text = li.querySelector('.text');
  $('send').disabled = true;

  const handle = (raw) => {
    let event = 'message';
    let data = '';
    for (const line of raw.split('\n')) {
      if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data += line.slice(6);
    }
    if (!data) return;
    const d = JSON.parse(data);
    if (event === 'delta') {
      text.textContent += d.text;
      li.scrollIntoView({ block: 'end' });
    } else if (event === 'done') {
      li.dataset.done = 'true';
      if (d.degraded) {
        li.classList.add('degraded');
        notice('Degraded answer: ' + explain(d.reasons) + '.', 'warn');
      }
    } else if (event === 'error') {
      li.classList.add('failed');
      notice(d.error, 'error');
    }
  };

  try {
    const res = await fetch('/v1/chat/stream', { method: 'POST', headers: headers(true), body: JSON.stringify(payload) });
    if (!res.ok) {
      li.remove();
      notice(await errorText(res), res.status === 429 ? 'warn' : 'error');
      return;
    }
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        handle(buf.slice(0, i));
        buf = buf.slice(i + 2);
      }
    }
  } catch (e) {
    li.classList.add('failed');
    notice('The connection broke: ' + e.message, 'error');
  } finally {
    li.classList.remove('streaming');
    $('send').disabled = false;
    $('question').focus();
  }
}

async function forget() {
  const res = await fetch('/v1/me', { method: 'DELETE', headers: headers(false) });
  if (!res.ok) {
    notice(await errorText(res), 'error');
    return;
  }
  const body = await res.json();
  notice('Forgotten: ' + body.deleted_threads + ' conversation(s) deleted.', '');
  await loadHistory();
}

function choose() {
  const custom = $('video').value === 'custom';
  $('custom').hidden = !custom;
  localStorage.setItem('chatscale.video', $('video').value);
  localStorage.setItem('chatscale.course', $('course').value);
  localStorage.setItem('chatscale.videourl', $('videourl').value);
  loadHistory();
}

async function init() {
  const res = await fetch('/v1/config');
  const cfg = await res.json();
  state.auth = cfg.auth;
  state.videos = cfg.videos || [];
  if (cfg.offline_model) {
    $('mode').textContent = 'offline model';
    $('mode').hidden = false;
  }
  if (state.auth === 'bearer') {
    $('token-row').hidden = false;
    $('token').value = sessionStorage.getItem('chatscale.token') || '';
    $('token').addEventListener('change', () => {
      sessionStorage.setItem('chatscale.token', $('token').value.trim());
      loadHistory();
    });
  }
  const sel = $('video');
  let group = null;
  state.videos.forEach((v, i) => {
    if (!group || group.label !== v.course_title) {
      group = document.createElement('optgroup');
      group.label = v.course_title;
      sel.append(group);
    }
    group.append(new Option(v.title + ' (' + v.course_id + ' / ' + v.video_url + ')', String(i)));
  });
  sel.append(new Option('Other: type a course ID and a video URL', 'custom'));
  $('course').value = localStorage.getItem('chatscale.course') || '';
  $('videourl').value = localStorage.getItem('chatscale.videourl') || '';
  const saved = localStorage.getItem('chatscale.video');
  if (saved !== null && [...sel.options].some((o) => o.value === saved)) sel.value = saved;
  $('custom').hidden = sel.value !== 'custom';

  sel.addEventListener('change', choose);
  $('course').addEventListener('change', choose);
  $('videourl').addEventListener('change', choose);
  $('ask').addEventListener('submit', ask);
  $('question').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      $('ask').requestSubmit();
    }
  });
  $('forget').addEventListener('click', forget);
  await loadHistory();
  document.body.dataset.ready = 'true';
}

init().catch((e) => notice('The page could not start: ' + e.message, 'error'));
