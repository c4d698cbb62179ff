"""FHIR R4 required value sets that Parcours checks itself (fhir.resources does not enforce codes).

The gateway refuses a resource whose code is not in its set; the stream mapping relies on the
same sets. One definition, used by both.
"""

ENCOUNTER_CLASSES = frozenset(
    # v3 ActEncounterCode (http://terminology.hl7.org/CodeSystem/v3-ActCode).
    {"AMB", "EMER", "FLD", "HH", "IMP", "ACUTE", "NONAC", "OBSENC", "PRENC", "SS", "VR"}
)
V2_PATIENT_CLASS = "http://terminology.hl7.org/CodeSystem/v2-0004"
# Encounter.class codes that feeds send from other code systems, and the ActEncounterCode each
# means: HL7 v2 patient classes (PV1-2, table 0004), and the words of older Synthea output.
V2_PATIENT_CLASSES = {"E": "EMER", "I": "IMP", "O": "AMB", "P": "PRENC", "R": "AMB", "B": "IMP"}
ENCOUNTER_CLASS_WORDS = {
    "inpatient": "IMP",
    "emergency": "EMER",
    "ambulatory": "AMB",
    "outpatient": "AMB",
    "wellness": "AMB",
    "urgentcare": "AMB",
    "home": "HH",
    "virtual": "VR",
}


def encounter_class(coding: object) -> str | None:
    """The v3 ActEncounterCode that an Encounter.class Coding means, whatever system it names
    (None when it means none that Parcours knows)."""
    if not isinstance(coding, dict):
        return None
    code = coding.get("code")
    if not isinstance(code, str):
        return None
    if coding.get("system") == V2_PATIENT_CLASS:
        return V2_PATIENT_CLASSES.get(code)
    if code in ENCOUNTER_CLASSES:
        return code
    return ENCOUNTER_CLASS_WORDS.get(code.lower())


ENCOUNTER_STATUSES = frozenset(
    {
        "planned",
        "arrived",
        "triaged",
        "in-progress",
        "onleave",
        "finished",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
ENCOUNTER_LOCATION_STATUSES = frozenset({"planned", "active", "reserved", "completed"})
APPOINTMENT_STATUSES = frozenset(
    {
        "proposed",
        "pending",
        "booked",
        "arrived",
        "fulfilled",
        "cancelled",
        "noshow",
        "entered-in-error",
        "checked-in",
        "waitlist",
    }
)
EPISODE_OF_CARE_STATUSES = frozenset(
    {"planned", "waitlist", "active", "onhold", "finished", "cancelled", "entered-in-error"}
)
SERVICE_REQUEST_STATUSES = frozenset(
    {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
)
SERVICE_REQUEST_INTENTS = frozenset(
    {
        "proposal",
        "plan",
        "directive",
        "order",
        "original-order",
        "reflex-order",
        "filler-order",
        "instance-order",
        "option",
    }
)
OBSERVATION_STATUSES = frozenset(
    {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
LOCATION_STATUSES = frozenset({"active", "suspended", "inactive"})
ADMINISTRATIVE_GENDERS = frozenset({"male", "female", "other", "unknown"})


# Every concrete resource type of the R4B models, listed here because finding them by importing
# each model takes seconds (and the stream worker imports none). tests/unit/test_ingest_validate.py
# checks it against fhir.resources.
_RESOURCE_TYPE_NAMES = """
    Account ActivityDefinition AdministrableProductDefinition AdverseEvent AllergyIntolerance
    Appointment AppointmentResponse AuditEvent Basic Binary BiologicallyDerivedProduct
    BodyStructure Bundle CapabilityStatement CarePlan CareTeam CatalogEntry ChargeItem
    ChargeItemDefinition Citation Claim ClaimResponse ClinicalImpression ClinicalUseDefinition
    CodeSystem Communication CommunicationRequest CompartmentDefinition Composition ConceptMap
    Condition Consent Contract Coverage CoverageEligibilityRequest CoverageEligibilityResponse
    DetectedIssue Device DeviceDefinition DeviceMetric DeviceRequest DeviceUseStatement
    DiagnosticReport DocumentManifest DocumentReference Encounter Endpoint EnrollmentRequest
    EnrollmentResponse EpisodeOfCare EventDefinition Evidence EvidenceReport EvidenceVariable
    ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag Goal GraphDefinition Group
    GuidanceResponse HealthcareService ImagingStudy Immunization ImmunizationEvaluation
    ImmunizationRecommendation ImplementationGuide Ingredient InsurancePlan Invoice Library
    Linkage List Location ManufacturedItemDefinition Measure MeasureReport Media Medication
    MedicationAdministration MedicationDispense MedicationKnowledge MedicationRequest
    MedicationStatement MedicinalProductDefinition MessageDefinition MessageHeader
    MolecularSequence NamingSystem NutritionOrder NutritionProduct Observation
    ObservationDefinition OperationDefinition OperationOutcome Organization
    OrganizationAffiliation PackagedProductDefinition Parameters Patient PaymentNotice
    PaymentReconciliation Person PlanDefinition Practitioner PractitionerRole Procedure
    Provenance Questionnaire QuestionnaireResponse RegulatedAuthorization RelatedPerson
    RequestGroup ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject
    RiskAssessment Schedule SearchParameter ServiceRequest Slot Specimen SpecimenDefinition
    StructureDefinition StructureMap Subscription SubscriptionStatus SubscriptionTopic Substance
    SubstanceDefinition SupplyDelivery SupplyRequest Task TerminologyCapabilities TestReport
    TestScript ValueSet VerificationResult VisionPrescription
"""
RESOURCE_TYPES: frozenset[str] = frozenset(_RESOURCE_TYPE_NAMES.split())

# R4 types that R4B (whose definitions validate every resource here) withdrew: valid R4, which
# the gateway cannot check, so it refuses them saying so rather than calling them unknown.
WITHDRAWN_IN_R4B = frozenset(
    {
        "EffectEvidenceSynthesis",
        "MedicinalProduct",
        "MedicinalProductAuthorization",
        "MedicinalProductContraindication",
        "MedicinalProductIndication",
        "MedicinalProductIngredient",
        "MedicinalProductInteraction",
        "MedicinalProductManufactured",
        "MedicinalProductPackaged",
        "MedicinalProductPharmaceutical",
        "MedicinalProductUndesirableEffect",
        "RiskEvidenceSynthesis",
        "SubstanceNucleicAcid",
        "SubstancePolymer",
        "SubstanceProtein",
        "SubstanceReferenceInformation",
        "SubstanceSourceMaterial",
        "SubstanceSpecification",
    }
)
