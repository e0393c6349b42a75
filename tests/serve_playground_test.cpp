// The playground page (GET /) driven in headless Chromium through chromedriver's WebDriver HTTP
// API: type a prompt, set temperature 0, press Generate, wait for the stream to finish, and compare
// the page's text with the API's own greedy answer. The server runs with an API key, so the page
// is first shown to report the 401 and then to succeed once the key field is filled.
//
// Chromium and chromedriver come from Debian (scripts/setup.sh). Missing ones fail the test,
// unless MAMBACPP_SKIP_BROWSER_TESTS=1 asks to skip it. MAMBACPP_PLAYGROUND_SCREENSHOT=FILE.png
// keeps the screenshot of the finished page (docs/serve_playground.png comes from it).
#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "serve_test_process.h"
#include "test_support.h"

namespace mambacpp::testing {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr const char* kPrompt = "Hello, is the";
constexpr int kMaxTokens = 24;
constexpr const char* kApiKey = "playground-test-key";
constexpr const char* kElementKey = "element-6066-11e4-a52e-4f735466cecf";  // W3C WebDriver

std::string decode_base64(const std::string& text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  int bits = 0, buffer = 0;
  for (char c : text) {
    const int v = value(c);
    if (v < 0) continue;  // '=' padding, line breaks
    buffer = (buffer << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(char((buffer >> bits) & 0xff));
    }
  }
  return out;
}

// One WebDriver session of chromedriver listening on `port`.
class WebDriver {
 public:
  WebDriver(int port, const std::string& chromium) : client_("127.0.0.1", port) {
    client_.set_read_timeout(60s);
    const json capabilities = {
        {"capabilities",
         {{"alwaysMatch",
           {{"browserName", "chrome"},
            {"goog:chromeOptions",
             {{"binary", chromium},
              {"args", {"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--window-size=1160,820"}}}}}}}}};
    session_ = call("POST", "/session", capabilities).at("sessionId").get<std::string>();
  }
  ~WebDriver() {
    if (!session_.empty()) client_.Delete(("/session/" + session_).c_str());
  }

  void open(const std::string& url) { call("POST", path("/url"), {{"url", url}}); }
  std::string element(const std::string& id) {
    return call("POST", path("/element"), {{"using", "css selector"}, {"value", "#" + id}}).at(kElementKey);
  }
  void type(const std::string& id, const std::string& text) {
    const std::string e = element(id);
    call("POST", path("/element/" + e + "/clear"), json::object());
    call("POST", path("/element/" + e + "/value"), {{"text", text}});
  }
  void click(const std::string& id) { call("POST", path("/element/" + element(id) + "/click"), json::object()); }
  json run_script(const std::string& script) {
    return call("POST", path("/execute/sync"), {{"script", script}, {"args", json::array()}});
  }
  std::string screenshot_png() { return decode_base64(call("GET", path("/screenshot"), nullptr).get<std::string>()); }

 private:
  std::string path(const std::string& rest) const { return "/session/" + session_ + rest; }

  // The `value` of a WebDriver reply; throws with the driver's message on an error.
  json call(const std::string& method, const std::string& path, const json& body) {
    const auto res = method == "GET" ? client_.Get(path.c_str())
                                     : client_.Post(path.c_str(), body.dump(), "application/json");
    if (!res) throw std::runtime_error("WebDriver " + method + " " + path + ": no answer from chromedriver");
    const json reply = json::parse(res->body, nullptr, false);
    if (res->status != 200 || reply.is_discarded() || !reply.contains("value"))
      throw std::runtime_error("WebDriver " + method + " " + path + " -> HTTP " + std::to_string(res->status) +
                               ": " + res->body.substr(0, 2000));
    return reply.at("value");
  }

  httplib::Client client_;
  std::string session_;
};

struct Browser {
  std::filesystem::path chromium, chromedriver;
};

// Chromium and chromedriver from PATH. Missing ones are a failure (CI installs both), not a skip,
// unless MAMBACPP_SKIP_BROWSER_TESTS=1.
std::optional<Browser> find_browser(std::string& problem) {
  Browser b;
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"})
    if (b.chromium.empty()) b.chromium = find_on_path(name);
  b.chromedriver = find_on_path("chromedriver");
  if (b.chromium.empty()) problem = "chromium is not installed (Debian package `chromium`; scripts/setup.sh installs it)";
  else if (b.chromedriver.empty())
    problem = "chromedriver is not installed (Debian package `chromium-driver`; scripts/setup.sh installs it)";
  if (!problem.empty()) return std::nullopt;
  return b;
}

struct ApiAnswer {
  std::string text;
  size_t tokens = 0;
};

// The API's own greedy answer, non-streaming.
ApiAnswer greedy_answer(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(30s);
  const json body = {{"prompt", kPrompt}, {"max_tokens", kMaxTokens}, {"temperature", 0}, {"return_tokens", true}};
  const auto res = client.Post("/v1/completions", {{"Authorization", std::string("Bearer ") + kApiKey}}, body.dump(),
                               "application/json");
  if (!res || res->status != 200)
    throw std::runtime_error("POST /v1/completions failed: " + (res ? res->body : std::string("no answer")));
  const json choice = json::parse(res->body).at("choices").at(0);
  return {choice.at("text").get<std::string>(), choice.at("tokens").size()};
}

// Waits until #status leaves "running" (the page sets it when the request starts) and returns
// its final state.
std::string wait_for_page(WebDriver& driver) {
  std::string state;
  wait_until(
      [&] {
        state = driver.run_script("return document.getElementById('status').dataset.state").get<std::string>();
        return state != "running" && state != "idle";
      },
      20s);
  return state;
}

std::string page_text(WebDriver& driver, const std::string& id) {
  return driver.run_script("return document.getElementById('" + id + "').textContent").get<std::string>();
}

TEST(ServePlayground, StreamsTheGreedyAnswerInHeadlessChromium) {
  std::string problem;
  const std::optional<Browser> browser = find_browser(problem);
  if (!browser) {
    const char* skip = std::getenv("MAMBACPP_SKIP_BROWSER_TESTS");
    if (skip && std::string(skip) == "1") GTEST_SKIP() << problem << " (MAMBACPP_SKIP_BROWSER_TESTS=1)";
    FAIL() << problem << ". Set MAMBACPP_SKIP_BROWSER_TESTS=1 to skip this test on purpose.";
  }

  TempDir dir;
  ServeProcess server(tiny_model_with_tokenizer(dir), dir.path(), {"--api-key", kApiKey});
  const ApiAnswer expected = greedy_answer(server.port());
  ASSERT_FALSE(expected.text.empty()) << "the tiny model's greedy answer to \"" << kPrompt << "\" is empty";

  const int driver_port = free_loopback_port();
  ChildProcess chromedriver({browser->chromedriver.string(), "--port=" + std::to_string(driver_port)},
                            dir / "chromedriver.log");
  ASSERT_TRUE(wait_for_http(chromedriver, driver_port, "/status", 15s)) << "chromedriver did not start:\n"
                                                                          << chromedriver.log();
  WebDriver driver(driver_port, browser->chromium.string());
  driver.open(server.url() + "/");
  driver.type("prompt", kPrompt);
  driver.type("max_tokens", std::to_string(kMaxTokens));
  driver.type("temperature", "0");

  // Without the key the server refuses, and the page says so.
  driver.click("generate");
  ASSERT_EQ(wait_for_page(driver), "error");
  EXPECT_NE(page_text(driver, "status").find("401"), std::string::npos) << page_text(driver, "status");

  driver.type("api_key", kApiKey);
  driver.click("generate");
  const std::string state = wait_for_page(driver);
  ASSERT_EQ(state, "done") << "status: " << page_text(driver, "status") << "\nserver log:\n" << server.log();

  const std::string streamed = page_text(driver, "output");
  EXPECT_EQ(streamed, expected.text) << "the page's streamed text differs from the API's greedy answer";
  const int chunks = std::stoi(driver.run_script("return document.getElementById('output').dataset.chunks")
                                   .get<std::string>());
  EXPECT_GE(chunks, 1) << "no text chunk arrived through the stream";
  EXPECT_EQ(page_text(driver, "tokens"), std::to_string(expected.tokens));
  const std::string ttft = page_text(driver, "ttft");
  EXPECT_NE(ttft, "-") << "time to first token not shown";
  EXPECT_GE(std::atof(ttft.c_str()), 0.0);

  const std::string png = driver.screenshot_png();
  ASSERT_GE(png.size(), 8u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << "the screenshot is not a PNG";
  if (const char* out = std::getenv("MAMBACPP_PLAYGROUND_SCREENSHOT")) write_text(out, png);
}

}  // namespace
}  // namespace mambacpp::testing
