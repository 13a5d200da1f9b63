"""The floor: a bare FastAPI endpoint that reads the body and answers 202."""

from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.post("/webhook")
async def webhook(request: Request) -> Response:
    await request.body()
    return Response(status_code=202)
