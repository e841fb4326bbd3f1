"""Built-in texts the export validates against: real sentences of mixed lengths, and QA pairs.

They ship with the code so validation works on any machine, data packages or not.
"""

from __future__ import annotations

IMMUNE_SYSTEM = (
    "The immune system is a system of many biological structures and processes within an "
    "organism that protects against disease. To function properly, an immune system must detect "
    "a wide variety of agents, known as pathogens, from viruses to parasitic worms, and distinguish "
    "them from the organism's own healthy tissue. In many species, the immune system can be "
    "classified into subsystems, such as the innate immune system versus the adaptive immune "
    "system, or humoral immunity versus cell-mediated immunity. In humans, the blood-brain barrier, "
    "blood-cerebrospinal fluid barrier, and similar fluid-brain barriers separate the peripheral "
    "immune system from the neuroimmune system, which protects the brain."
)

PARIS = (
    "Paris is the capital and most populous city of France. With an estimated population of "
    "2,102,650 residents in January 2023 in an area of more than 105 km2, Paris is the fourth-most "
    "populous city in the European Union. Since the 17th century, Paris has been one of the world's "
    "major centres of finance, diplomacy, commerce, culture, fashion, and gastronomy."
)

SENTENCES: tuple[str, ...] = (
    "I love Paris",
    "This movie was a complete waste of time.",
    "An absolute triumph: the acting, the score and the photography are all superb.",
    "Not bad.",
    "I expected nothing and was still disappointed; the plot makes no sense and the dialogue is wooden.",
    "The film drags in the middle, but the final twenty minutes are some of the best I have seen this year.",
    "Terrible.",
    "A warm, funny and surprisingly moving story about a family that refuses to give up on each other.",
    IMMUNE_SYSTEM,
    "What a delight!",
    "It is the kind of movie you forget before you reach the parking lot.",
    PARIS + " " + IMMUNE_SYSTEM + " " + PARIS,  # longer than most windows: exercises truncation
)

QA_PAIRS: tuple[tuple[str, str], ...] = (
    ("What is the immune system?", IMMUNE_SYSTEM),
    ("What does the immune system protect against?", IMMUNE_SYSTEM),
    ("What separates the peripheral immune system from the neuroimmune system?", IMMUNE_SYSTEM),
    ("What is the capital of France?", PARIS),
    ("How many residents did Paris have in January 2023?", PARIS),
    ("Since when has Paris been a major centre of finance?", PARIS),
    ("What protects the brain?", (PARIS + " ") * 6 + IMMUNE_SYSTEM),  # answer in a later window
)
