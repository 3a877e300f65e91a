"""Prompts shared by thought construction, encoding, inference and evaluation.

Training data and evaluation must use the same refine turn, so it lives in one place.
"""

# The paper's evaluation refine prompt.
REFINE_PROMPT = "Please further think about and give me a more precise and professional answer."

# The strong model's in-context refinement instruction (thought construction, final answer).
FINAL_ANSWER_INSTRUCTION = (
    "Below is a question and several earlier attempts at answering it. Read the attempts, keep what is "
    "right, fix what is wrong, and write a better, complete answer to the question. Reply with the answer "
    "only; do not mention the attempts."
)
