// The playground served at GET /: one self-contained HTML page (CSS and JavaScript inline, no
// framework, no external requests) that streams completions from POST /v1/completions.
//
// Element ids, stable for tests (tests/serve_playground_test.cpp) and for anyone scripting it:
//   prompt, max_tokens, temperature, top_p, top_k, min_p, repetition_penalty, seed, stop
//   (stop strings, one per line), api_key, generate, cancel (the Stop button), output,
//   ttft (time to first token, ms), tps (decode tokens/s), tokens (count), status.
// #status carries data-state = idle | running | done | stopped | error; #output data-chunks
// counts the stream's SSE chunks that carried text.
#pragma once

#include <string_view>

namespace mambacpp::serve {

std::string_view playground_html();

}  // namespace mambacpp::serve
