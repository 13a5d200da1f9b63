import time
from tests.test_claude_e2e import *  # noqa
from tests.test_claude_e2e import e2e, api  # noqa

@pytest.mark.parametrize("retries", [1, 2, 3])
async def test_probe(e2e, api, retries):
    api.script(*(error(529) for _ in range(10)))
    ctx = await e2e.context(make_task(), e2e.type_config(max_api_retries=retries))
    t = time.monotonic()
    r = await e2e.runner().run(ctx)
    print(f"\nretries={retries}: {time.monotonic()-t:.2f}s requests={len(api.message_requests())} {r.error}")
