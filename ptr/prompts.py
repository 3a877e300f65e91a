"""Prompts shared by thought construction, encoding, inference and evaluation.

Training data and evaluation must use the same refine turn, so it lives in one place.
"""

# The paper's refine prompt: cydu24/Progressive-Thought-Refinement (commit 84182f1),
# PTR_evaluation/get_multiround_prompt.py, which ends it with "\n" (dropped here: chat turns are
# stripped). Imported paper thought data that names no prompt is laid out with this one.
REFINE_PROMPT = "Please further think about and give me a more precise and professional answer."

# The strong model's in-context refinement instruction (thought construction, final answer).
FINAL_ANSWER_INSTRUCTION = (
    "Below is a question and several earlier attempts at answering it. Read the attempts, keep what is "
    "right, fix what is wrong, and write a better, complete answer to the question. Reply with the answer "
    "only; do not mention the attempts."
)
