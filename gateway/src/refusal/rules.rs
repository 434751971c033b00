//! The compiled-in rules: shared fragments, the rule templates and the
//! "answer follows" overrides. See the module docs of [`crate::refusal`] for
//! what each rule catches and what it must leave alone.
//!
//! Templates are written with `<NAME>` placeholders for the fragments below,
//! so regex braces (`{0,3}`) need no escaping. [`expand`] substitutes them
//! (fragments may use other fragments).
//!
//! Every default pattern starts with `(?i-u)`: ASCII case folding and ASCII
//! `\b`/`\w`/`\s`, which keeps the automaton small and lets the lazy DFA run
//! on any text (Unicode word boundaries would force a slower engine on
//! non-ASCII input). Non-ASCII literals (`’`, `désolé`) still match their
//! UTF-8 bytes; the multilingual rule turns Unicode back on locally.

/// One compiled-in rule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DefaultRule {
    /// Stable id reported in events (`refusal_reason`).
    pub id: &'static str,
    /// A soft rule is cancelled when an answer follows (see [`OVERRIDES`]).
    pub soft: bool,
    /// Pattern with `<FRAGMENT>` placeholders.
    pub template: &'static str,
}

/// Named fragments used by the templates.
const FRAGMENTS: &[(&str, &str)] = &[
    // Apostrophe, straight or typographic.
    ("A", r"(?:'|’)"),
    // Start of the response: whitespace, markdown/quote marks, a role label.
    (
        "LEAD",
        r#"^[\s>*_#"`]*(?:(?:assistant|ai|answer|response)\s*:\s*)?[\s*_"]*"#,
    ),
    // Up to two short sentences before the cue ("I understand your concern. ").
    ("GAP", r"(?-u:[^.!?\n])"),
    // Like GAP but also stops at quotation marks: a quoted refusal is not one.
    // (“ and ” are E2 80 9C / E2 80 9D in UTF-8.)
    (
        "CGAP",
        r#"(?-u:[^.!?\n"\xE2]|\xE2[^\x80]|\xE2\x80[^\x9C\x9D])"#,
    ),
    ("PRE", r"(?:<GAP>*[.!?]\s+){0,2}"),
    // A clause before the cue inside the same sentence ("It is illegal, and I cannot").
    (
        "CLAUSE",
        r"(?:<CGAP>*?(?:[,;:]|\s-|\bbut|\band|\bso|\bhowever|\btherefore|\bthus|\bhence))?\s*",
    ),
    (
        "CLAUSE_THAT",
        r"(?:<CGAP>*?(?:[,;:]|\s-|\bbut|\band|\bso|\bhowever|\btherefore|\bthus|\bhence|\bthat))?\s*",
    ),
    // First-person inability or unwillingness.
    (
        "I_NEG",
        r"(?:i(?:<A>m|\s+am)\s+(?:not\s+able|unable|not\s+(?:going|comfortable|allowed|permitted|in\s+a\s+position))|i\s+(?:cannot|can<A>?t|can\s+not|won<A>?t|will\s+not|must\s+not|shouldn<A>?t|should\s+not|(?:won<A>?t|will\s+not)\s+be\s+able|(?:do\s+not|don<A>?t)\s+feel\s+comfortable|(?:do\s+not|don<A>?t)\s+think\s+(?:that\s+)?i\s+(?:should|can|could)))(?:\s+(?:and|or)\s+(?:will\s+not|won<A>?t|shall\s+not|should\s+not|must\s+not))?",
    ),
    // Words allowed between the negation and the verb ("cannot in good conscience provide").
    (
        "NEG_ADV",
        r"(?:(?:in\s+good\s+conscience|ethically|responsibly|legally|personally|directly|actually|really|simply|currently|fully|safely|morally|comfortably|be\s+able\s+to|to),?\s+){0,3}",
    ),
    // Verbs of helping: what a refusal says it will not do.
    (
        "ASSIST_VERB",
        r"(?:provide|help\s+(?:you|with|them|him|her|in|on|anyone|people|plan|make|build|create|write|find|get|hack|cheat|steal|hurt|harm|break|bypass|spread|track|spy|stalk)\b|help[.,;!]|assist|fulfil|comply|answer|respond|give|generate|create|write|produce|support|engage|participate|offer|share|encourage|endorse|condone|promote|suggest|advise|tell\s+you|disclose|reveal|facilitate|accommodate|do\s+(?:that|this|so|what)|complete\s+(?:this|that|your)|continue\s+(?:this|with)|discuss|draft|compose|satisfy|teach|guide|instruct|supply|grant|agree|justify|take\s+part|be\s+(?:of\s+)?(?:help|assistance)|be\s+a\s+part|go\s+along|partake)",
    ),
    // After "I refuse to": the verbs of a refused task only ("I refuse to give
    // up" is no refusal).
    (
        "REFUSE_VERB",
        r"(?:provide|help|assist|answer|respond|comply|write|create|generate|produce|engage|participate|take\s+part|share|support|promote|condone|endorse|discuss|draft|compose|do\s+(?:that|this|so))\b",
    ),
    // Capability verbs, accepted after an apology or an AI self-reference.
    (
        "CAP_VERB",
        r"(?:access|browse|view|see\s+(?:or|and)|open|read|process|perform|verify|confirm|look\s+up|retrieve|fulfill|complete|find\s+(?:any|information|that)|locate|generate|create|make|send|execute|run|search|interact|that|this)\b",
    ),
    (
        "OK_ADJ",
        r"(?:appropriate|ethical|acceptable|okay|ok|responsible|respectful)",
    ),
    // What follows one negation in NOT_OK: "(not) appropriate", "(not) right or fair".
    (
        "NOT_OK_ADJ",
        r"(?:(?:\w+\s+(?:or|and|nor)\s+)?<OK_ADJ>|\w+\s+(?:or|and)\s+fair)",
    ),
    // "it is not appropriate (for me) to", "it wouldn't be appropriate to",
    // "that would be unethical to"; not "it would not be inappropriate to".
    (
        "NOT_OK",
        r"(?:it|that|this)(?:(?:<A>s|\s+is|\s+would\s+be)\s+(?:(?:not|never|neither)\s+<NOT_OK_ADJ>|(?:\w+\s+(?:or|and)\s+)?(?:inappropriate|unethical|irresponsible))|(?:\s+would(?:\s+not|n<A>t)\s+be|\s+isn<A>t)\s+<NOT_OK_ADJ>)\b(?:\s+(?:or|nor|and)\s+\w+)?\s+(?:for\s+(?:me|us|an\s+ai)\s+)?to\b",
    ),
    // "that's not something I can help with", "this isn't something I'm able to do".
    (
        "NOT_SOMETHING",
        r"(?:that|this|it)(?:<A>s\s+not|\s+is\s+not|\s+isn<A>t)\s+something\s+(?:that\s+)?i(?:\s+(?:can|could|will|am\s+able\s+to)|<A>m\s+able\s+to)\s+<NEG_ADV>(?:<ASSIST_VERB>|<CAP_VERB>|do\b)",
    ),
    (
        "APOLOGY",
        r"(?:(?:i<A>?m|i\s+am)\s+(?:(?:so|very|truly|really|terribly|deeply)\s+)?sorry|(?:i\s+)?(?:sincerely\s+)?apologi[sz]e|(?:my\s+)?apologies|(?:i<A>?m|i\s+am)\s+afraid|unfortunately|regrettably|sadly|sorry)",
    ),
    // "as an AI (language model)", "I'm just an AI", "I am an AI assistant".
    (
        "AI_SELF",
        r"(?:as\s+an?\s+|i<A>?m\s+(?:just\s+|only\s+)?an?\s+|i\s+am\s+(?:just\s+|only\s+)?an?\s+)(?:\w+\s+){0,3}?(?:ai|a\.i\.|artificial\s+intelligence|language\s+model|assistant|chatbot)\b",
    ),
    // Moralising prefaces that introduce a lecture.
    (
        "PREFACE",
        r"(?:(?:it<A>?s|it\s+is)\s+(?:important|crucial|essential)\s+to\s+(?:note|remember|understand|recognize|emphasize|clarify|mention|point\s+out)\s+that\s+|i\s+(?:must|have\s+to|want\s+to|would\s+like\s+to)\s+(?:clarify|emphasize|stress|point\s+out|remind\s+you)\s+that\s+)",
    ),
    (
        "ADV",
        r"(?:not\s+only|both|highly|strictly|extremely|very|completely|absolutely|generally|considered|morally|also)",
    ),
    (
        "MORAL",
        r"(?:(?:illegal|dangerous|harmful)\s+(?:and|or)\s+(?:\w+\s+)?(?:unethical|immoral|wrong)|unethical|immoral|never\s+(?:an?\s+)?(?:\w+\s+(?:or|and)\s+)?(?:acceptable|okay|ok|appropriate|the\s+answer|justified|justifiable|ethical|a\s+good\s+idea|solution)|not\s+(?:an?\s+)?(?:\w+\s+(?:or|and)\s+)?(?:ethical|appropriate|acceptable|okay))",
    ),
];

/// The compiled-in rules, in priority order (hard rules are reported before
/// soft ones whatever their position).
pub(crate) const DEFAULT_RULES: &[DefaultRule] = &[
    DefaultRule {
        id: "apology_inability",
        soft: false,
        template: r"(?i-u)<LEAD><APOLOGY>\b<GAP>*?(?:\bbut\b|[,;:.\-])?\s*(?:<AI_SELF>,?\s*)?(?:<I_NEG>\s+<NEG_ADV>(?:<ASSIST_VERB>|<CAP_VERB>)|i\s+(?:must|have\s+to|need\s+to)\s+(?:respectfully\s+|politely\s+)?(?:decline|refuse)|<NOT_OK>|<NOT_SOMETHING>|(?:this|that)\s+(?:is|would\s+be)\s+(?:beyond|outside)\s+(?:my|the\s+scope))",
    },
    DefaultRule {
        id: "cannot_assist",
        soft: false,
        template: r"(?i-u)<LEAD><PRE>(?:no,?\s+)?<CLAUSE>(?:<I_NEG>\s+<NEG_ADV><ASSIST_VERB>|i\s+(?:won<A>?t|will\s+not)\s+be\s+(?:providing|helping|assisting|writing|creating|generating|sharing|answering|doing\s+(?:that|this)|giving|producing)\b|<NOT_SOMETHING>)",
    },
    DefaultRule {
        id: "decline",
        soft: false,
        template: r"(?i-u)<LEAD><PRE><CLAUSE>(?:i\s+(?:must|have\s+to|will|would\s+(?:like\s+to|have\s+to)|<A>ll|need\s+to)\s+(?:respectfully\s+|politely\s+|kindly\s+)?(?:decline|refuse|pass\s+on)|i(?:<A>d|\s+would)\s+(?:rather|prefer)\s+not\s+(?:to\s+)?<NEG_ADV>(?:<ASSIST_VERB>|<CAP_VERB>)|i\s+(?:respectfully\s+)?(?:refuse|decline)\s+to\s+<NEG_ADV><REFUSE_VERB>|(?:i(?:<A>m|\s+am)\s+not|i\s+(?:do\s+not|don<A>?t)\s+feel)\s+(?:entirely\s+|completely\s+|really\s+)?comfortable\s+(?:with\s+(?:that|this|it|the\s+request|your\s+request|such|helping|providing|writing|creating|generating)\b|providing|helping|writing|creating|generating|sharing|discussing|doing|assisting|answering|giving|engaging|participating|speculating|commenting|making|producing))",
    },
    DefaultRule {
        id: "not_appropriate",
        soft: false,
        template: r"(?i-u)<LEAD>(?:<PRE>(?:no,\s*|but\s+|however,\s*)?|(?:no,\s*)?<CLAUSE_THAT>)<NOT_OK>",
    },
    DefaultRule {
        id: "dont_think_appropriate",
        soft: false,
        template: r"(?i-u)<LEAD><PRE>i(?:\s+don<A>?t|\s+do\s+not|<A>m\s+not\s+sure|\s+am\s+not\s+sure)\s+(?:think|believe|that)\s+(?:that\s+)?(?:it<A>?s|it\s+is|it\s+would\s+be|that<A>?s|that\s+is|this\s+is|it<A>?d\s+be)\s+(?:(?:\w+\s+(?:or|and)\s+)?(?:<OK_ADJ>|a\s+good\s+idea)|\w+\s+(?:or|and)\s+fair)",
    },
    DefaultRule {
        id: "policy",
        soft: false,
        template: r"(?i-u)<LEAD><PRE><GAP>*?\b(?:against\s+(?:my|our|the|openai<A>?s)\s+(?:\w+\s+){0,2}?(?:programming|guidelines|polic(?:y|ies)|principles|rules|terms|values)|(?:not|n<A>t)\s+within\s+my\s+(?:programming|guidelines|capabilities|abilities|scope)|(?:violates?|violation\s+of)\s+(?:my|our|the|openai<A>?s)\s+(?:\w+\s+)?(?:polic(?:y|ies)|guidelines|terms))",
    },
    DefaultRule {
        id: "multilingual",
        soft: false,
        template: r"(?i-u)<LEAD>(?u:(?:lo\s+siento|lo\s+lamento|disculp[ae]|desculp[ae]|sinto\s+muito|je\s+suis\s+d[ée]sol[ée]e?|d[ée]sol[ée]e?|es\s+tut\s+mir\s+leid|leider|mi\s+dispiace|purtroppo|извините|к\s+сожалению|抱歉|对不起|很抱歉|申し訳|すみません)<GAP>*?(?:no\s+puedo|não\s+posso|je\s+ne\s+peux|kann\s+ich|ich\s+kann|non\s+posso|не\s+могу|我无法|我不能|无法|不能|できません)|(?:no\s+puedo|não\s+posso|je\s+ne\s+peux\s+pas|ich\s+kann\s+(?:dir|ihnen|dabei)?\s*(?:nicht|keine)|non\s+posso|я\s+не\s+могу|我无法|我不能))",
    },
    DefaultRule {
        id: "no_access_private",
        soft: true,
        template: r"(?i-u)<LEAD>(?:<APOLOGY><GAP>*?(?:\bbut|,)\s*)?(?:<AI_SELF><GAP>*?,?\s*)?i\s+(?:don<A>?t|do\s+not)\s+have\s+(?:\w+\s+){0,2}?access\s+to\s+(?:\w+\s+){0,4}?(?:personal|private|confidential)\s+(?:\w+\s+)?(?:information|data|details|records)",
    },
    DefaultRule {
        id: "as_an_ai_cannot",
        soft: true,
        template: r"(?i-u)<LEAD><AI_SELF><GAP>*?(?:<I_NEG>\s+<NEG_ADV>(?:<ASSIST_VERB>|<CAP_VERB>)|(?:\bi|\band)\s+(?:do\s+not|don<A>?t)\s+(?:have\s+the\s+(?:ability|capability|capacity)|condone|support|promote|endorse|engage|encourage|provide|assist|help|generate|create)|(?:it<A>?s|it\s+is)\s+not\s+within|not\s+(?:able|programmed|designed|allowed|permitted)\s+to)",
    },
    DefaultRule {
        id: "moral_disclaimer",
        soft: true,
        template: r"(?i-u)<LEAD>(?:first(?:\s+and\s+foremost)?,?\s+|no,?\s+)?(?:<PREFACE><GAP>*?\b(?:is|are|would\s+be)\s+(?:<ADV>\s+)?(?:illegal|<MORAL>)|<GAP>*?\b(?:is|are|would\s+be)\s+(?:<ADV>\s+)?<MORAL>)\b",
    },
    DefaultRule {
        id: "condemn",
        soft: true,
        template: r"(?i-u)<LEAD>(?:i\s+(?:must|have\s+to|want\s+to)\s+(?:clarify|emphasize|stress|make\s+it\s+clear)\s+that\s+)?i\s+(?:(?:strongly|firmly)\s+)?(?:condemn|disagree\s+with|(?:do\s+not|don<A>?t|cannot|can<A>?t|will\s+not|won<A>?t)\s+(?:condone|endorse|support|promote|encourage|advocate))\b",
    },
    DefaultRule {
        id: "sympathy_redirect",
        soft: true,
        template: r"(?i-u)<LEAD><APOLOGY>\s+(?:to\s+hear\s+)?(?:that\s+)?(?:you<A>?re|you\s+are)\s+(?:going\s+through|feeling|struggling|experiencing|dealing)<GAP>*[.!?,]\s+(?:<GAP>*[.!?]\s+){0,2}?<GAP>*?\b(?:reach\s+out|talk\s+(?:things\s+over\s+)?(?:to|with)|seek\s+(?:\w+\s+)?(?:help|support)|mental\s+health\s+professional|crisis|helpline|hotline|people\s+who\s+care)",
    },
];

/// "An answer follows" cues. When one matches anywhere in the scanned window,
/// soft rules are not reported.
pub(crate) const OVERRIDES: &[(&str, &str)] = &[
    (
        "here_is",
        r"(?i-u)(?:^|[.!?:]\s+|\n)(?:(?:however|that\s+said|that\s+being\s+said|but|so|now|sure|okay|ok)\b,?\s*)?(?:if\s+you<GAP>*,\s*)?here(?:\s+are|\s+is|<A>s)\b",
    ),
    ("list", r"(?-u)\n\s*(?:1[.)]|[-*]|•)\s+\S"),
    ("code", r"```"),
    (
        "however_can",
        r"(?i-u)\b(?:however,\s+(?:if|in|here|i\s+(?:can|will|could)|you\s+(?:can|could|may|might))|but\s+i\s+can\s+(?:tell|provide|give|offer|share|help|explain|suggest|describe))\b",
    ),
];

/// A response that opens with an AI self-reference ("As an AI language
/// model, ...", "I'm just an AI, ...") is a disclaimer first: while this
/// matches, every rule counts as soft.
pub(crate) const AI_OPENING: &str = r"(?i-u)<LEAD><AI_SELF>";

/// Substitutes `<NAME>` placeholders with [`FRAGMENTS`] until none is left.
pub(crate) fn expand(template: &str) -> String {
    let mut out = template.to_owned();
    // Fragments nest at most a few levels deep; the bound guards against a cycle.
    for _ in 0..8 {
        let mut changed = false;
        for (name, body) in FRAGMENTS {
            let key = format!("<{name}>");
            if out.contains(&key) {
                out = out.replace(&key, body);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_expands() {
        for r in DEFAULT_RULES {
            let p = expand(r.template);
            for (name, _) in FRAGMENTS {
                assert!(!p.contains(&format!("<{name}>")), "{}: <{name}> left", r.id);
            }
        }
        for (id, t) in OVERRIDES {
            assert!(!expand(t).contains("<A>"), "{id}");
        }
    }

    #[test]
    fn ids_are_unique() {
        let mut ids: Vec<_> = DEFAULT_RULES.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), DEFAULT_RULES.len());
    }
}
