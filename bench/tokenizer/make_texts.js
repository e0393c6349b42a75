#!/usr/bin/env node
// Texts for the differential test, one JSON string per line on stdout:
//   node make_texts.js SEED COUNT [CORPUS_FILE...]
// every line and every fortune (text between "%" lines) of the corpus files, then COUNT random
// strings (seeded): words, digits, runs of every kind of whitespace, punctuation, contractions,
// accents (composed and decomposed), many scripts, emoji sequences, special tokens.
'use strict';
const fs = require('fs');

// mulberry32: a small seeded generator, so a failing text can be made again.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Blocks assigned long before Unicode 15 (characters newer than utf8proc's Unicode 15.0 are
// classified differently by HF's Oniguruma; docs/TOKENIZER.md).
const BLOCKS = [
  [0x20, 0x7e], [0xa0, 0x24f], [0x300, 0x36f], [0x370, 0x3ff], [0x400, 0x4ff], [0x590, 0x5ff],
  [0x600, 0x6ff], [0x900, 0x97f], [0xe00, 0xe7f], [0x1100, 0x11ff], [0x2000, 0x206f],
  [0x2070, 0x209f], [0x20a0, 0x20bf], [0x2100, 0x27bf], [0x3000, 0x30ff], [0x4e00, 0x9fa5],
  [0xac00, 0xd7a3], [0xe000, 0xe0ff], [0xfb00, 0xfb4f], [0xff00, 0xffef], [0x10000, 0x1007f],
  [0x1d400, 0x1d7ff], [0x1f300, 0x1f64f], [0x1f900, 0x1f9ff], [0x20000, 0x2a6d6],
];
const SPACES = [' ', ' ', ' ', '\t', '\n', '\r', '\u000b', '\u000c', '\u0085', '\u00a0', '\u1680',
  '\u2002', '\u2009', '\u200a', '\u2028', '\u2029', '\u202f', '\u205f', '\u3000', '\u200b'];
const WORDS = ['the', 'The', 'fortune', 'cookie', 'hello', 'world', 'naïve', 'café', 'cafe\u0301',
  'Åsa', 'Straße', 'ﬁne', '日本語', '中文', 'Привет', 'مرحبا', 'שלום', 'नमस्ते', 'สวัสดี', '한국어',
  'ǅemal', 'x²', '½', 'Ⅻ', '٣٤٥', '３４', '𝐀𝐁𝐂', 'I', 'A', 'Q'];
const PIECES = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'RE", "''", "'", '"', '...',
  '--', '%', '<|endoftext|>', '<|padding|>', '<|endoftext', '|>', '<mask>', ' <mask> ', '\\',
  '🙂', '👍🏽', '👨‍👩‍👧', '🏳️‍🌈', '❤️', '\u200d', '\ufe0f', 'e\u0301', 'A\u030a', '\ufffd', '\u0000'];

function randomString(next) {
  const pick = (list) => list[Math.floor(next() * list.length)];
  const atoms = 1 + Math.floor(next() * 40);
  let s = '';
  for (let i = 0; i < atoms; i++) {
    const r = next();
    if (r < 0.25) {
      s += pick(WORDS);
    } else if (r < 0.45) {
      const n = 1 + Math.floor(next() * (next() < 0.2 ? 12 : 3));
      for (let k = 0; k < n; k++) s += pick(SPACES);
    } else if (r < 0.55) {
      s += String(Math.floor(next() * 10 ** (1 + Math.floor(next() * 8))));
    } else if (r < 0.7) {
      s += pick(PIECES);
    } else {
      const n = 1 + Math.floor(next() * 6);
      for (let k = 0; k < n; k++) {
        const [lo, hi] = pick(BLOCKS);
        s += String.fromCodePoint(lo + Math.floor(next() * (hi - lo + 1)));
      }
    }
  }
  return s;
}

function corpusTexts(path) {
  const text = fs.readFileSync(path, 'utf8');
  const lines = text.split('\n');
  const fortunes = text.split(/^%\n/m);
  return lines.concat(fortunes).filter((t) => t.length > 0);
}

function main() {
  const [seedArg, countArg, ...corpus] = process.argv.slice(2);
  if (seedArg === undefined || countArg === undefined) {
    console.error('usage: node make_texts.js SEED COUNT [CORPUS_FILE...]');
    process.exit(2);
  }
  const out = [];
  for (const path of corpus) for (const t of corpusTexts(path)) out.push(JSON.stringify(t));
  const next = rng(Number(seedArg));
  for (let i = 0; i < Number(countArg); i++) out.push(JSON.stringify(randomString(next)));
  process.stdout.write(out.join('\n') + '\n');
}

main();
